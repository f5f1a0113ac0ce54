"""`tuna serve`: an OpenAI-compatible server for a base model and any number of LoRA adapters over it.

`batcher` runs the model (continuous batching, one copy of the base for every adapter), `text` turns
tokens into the text a client may see, `api` speaks OpenAI's HTTP schema, `load` reads the model and
adapters, and `vllm` hands the same job to vLLM on a CUDA machine.
"""
