"""`tuna serve` under load: 8 clients at once against the same 8 requests sent one after another.

    python benchmarks/serve.py                  # the embedded model on the CPU, 8 requests of 64 tokens

One `tuna serve` process (the transformers engine, continuous batching); the requests are chat
completions at temperature 0, each a different question, through the official `openai` client. Printed
per mode: completion tokens, wall seconds, tokens per second, the mean time to the first streamed token,
and whether every reply equals its one-at-a-time twin (batched float sums may differ in the last bits, so
a greedy tie can break another way; the count is printed, not assumed).
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

QUESTIONS = ["What is the capital of France?", "Name three primary colours.", "How many days are in a leap year?",
             "What is 12 times 12?", "Write a haiku about the sea.", "What does a CPU do?",
             "Give one tip for sleeping well.", "Translate 'good morning' to Spanish."]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, server: subprocess.Popen, limit: float = 300) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"the server exited with {server.returncode}")
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    sys.exit("the server did not come up")


def one(client, model: str, question: str, max_tokens: int) -> tuple[str, int, float]:
    """(text, completion tokens, seconds to the first token) of one streamed request."""
    start, first, pieces, tokens = time.perf_counter(), None, [], 0
    stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                            max_tokens=max_tokens, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter() - start
            pieces.append(chunk.choices[0].delta.content)
    return "".join(pieces), tokens, first or 0.0


def measure(client, model: str, max_tokens: int, clients: int) -> tuple[list, float]:
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        replies = list(pool.map(lambda q: one(client, model, q, max_tokens), QUESTIONS))
    return replies, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    from openai import OpenAI

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "tuna", "serve", args.model, "--port", str(port),
                               "--name", "m"], env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    try:
        wait_until_up(url, server)
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)
        one(client, "m", "Hello", 4)  # warm-up
        serial, serial_s = measure(client, "m", args.max_tokens, clients=1)
        batched, batched_s = measure(client, "m", args.max_tokens, clients=len(QUESTIONS))
    finally:
        server.terminate()
        server.wait()
    print(f"{len(QUESTIONS)} chat requests, max_tokens {args.max_tokens}, temperature 0, model {args.model}, "
          f"{os.cpu_count()} CPUs")
    print(f"{'mode':<24}{'tokens':>8}{'seconds':>10}{'tokens/s':>10}{'first token s':>15}")
    for label, replies, seconds in (("one after another", serial, serial_s),
                                    (f"{len(QUESTIONS)} clients at once", batched, batched_s)):
        tokens = sum(r[1] for r in replies)
        print(f"{label:<24}{tokens:>8}{seconds:>10.2f}{tokens / seconds:>10.1f}"
              f"{sum(r[2] for r in replies) / len(replies):>15.2f}")
    speedup = (sum(r[1] for r in batched) / batched_s) / (sum(r[1] for r in serial) / serial_s)
    same = sum(a[0] == b[0] for a, b in zip(serial, batched))
    print(f"batching: {speedup:.2f}x the tokens per second; {same} of {len(QUESTIONS)} replies identical")


if __name__ == "__main__":
    main()
