"""`tuna merge`: combine fine-tunes of one base, tensor by tensor, into a plain transformers checkpoint.

config.py reads mergekit's YAML shape; sources.py opens every kind of input lazily; rules.py holds the
per-tensor merge rules (soups, task arithmetic, TIES, DARE, SLERP, Model Stock, LiNeS); vocab.py aligns
vocabularies under an explicit `tokenizer_source`; write.py writes sharded safetensors and the model
card; adapters.py combines LoRA adapters without building full models; run.py puts them together.
"""
