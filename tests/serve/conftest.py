"""A real `tuna serve` on 127.0.0.1 over the tiny model, with two adapters trained to answer differently."""
import json
import socket
import threading
import time

import pytest

ANSWERS = {"paris": "Paris", "march": "March"}
QUESTIONS = ["what is the capital", "hello world", "answer the question", "what is 2 + 2?", "the quick brown fox",
             "tell me a date", "July", "system user"]


def train_adapter(root, model_dir, answer):
    from tuna.config import validate_recipe
    from tuna.train.loop import train

    data = root / f"{answer}.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                     {"role": "assistant", "content": answer}]}) + "\n"
                            for q in QUESTIONS * 2))
    recipe = validate_recipe({"model": str(model_dir), "data": {"path": str(data)}, "method": "lora",
                              "lora": {"r": 8}, "output_dir": str(root / answer),
                              "train": {"max_steps": 40, "micro_batch_size": 8, "lr": 3e-2, "device": "cpu",
                                        "precision": "fp32", "save_every": 1000, "seed": 0}})
    train(recipe, progress=False)
    return root / answer


@pytest.fixture(scope="session")
def adapter_runs(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return {name: train_adapter(root, tiny_model_dir, answer) for name, answer in ANSWERS.items()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def server(tiny_model_dir, adapter_runs):
    """(base URL, batcher) of a server in this process, the base named `tiny`."""
    import uvicorn

    from tuna.serve.run import build

    app, batcher = build(str(tiny_model_dir), {n: str(r) for n, r in adapter_runs.items()}, name="tiny",
                         max_batch=16)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", batcher
    server.should_exit = True
    thread.join(timeout=10)
    batcher.close()


@pytest.fixture
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=f"{server[0]}/v1", api_key="unused", max_retries=0, timeout=60)
