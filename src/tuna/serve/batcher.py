"""Continuous batching: one worker thread runs the model for every request, over one copy of the base.

Each step either admits the waiting requests (their prompts prefilled together, their KV cache joined
to the running batch's, left-padded) or decodes one token for every running request. A request leaves
the batch when it ends (EOS, a stop string, its max_tokens) or when its client has gone, and its rows of
the cache go with it; a new request need not wait for the others to finish. Rows of different adapters
share a batch: PEFT's `adapter_names` routes each row through its own LoRA weights (the S-LoRA idea).
"""
from __future__ import annotations

import queue
import secrets
import sys
import threading
import traceback
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from tuna.models.generate import nucleus_sample
from tuna.serve.text import CompletionText

BASE = "__base__"  # PEFT's name for "no adapter" in a mixed batch


@dataclass
class Job:
    """One request as the batcher sees it. `emit` is called from the worker thread with `{"text": delta}`,
    then once `{"done": finish_reason, "tokens": n}` or `{"error": message}`."""
    prompt: list[int]
    max_tokens: int
    emit: Callable[[dict], None]
    adapter: str | None = None  # None: the base model
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)


@dataclass
class Row:
    job: Job
    text: CompletionText
    generator: torch.Generator
    last: int = -1  # the token fed at the next step
    produced: int = 0
    done: bool = False


class Batcher:
    def __init__(self, model, tokenizer, *, max_batch: int = 16, adapters: bool = False):
        self.model, self.tokenizer, self.max_batch, self.adapters = model.eval(), tokenizer, max_batch, adapters
        self.device = next(model.parameters()).device
        eos = model.generation_config.eos_token_id if model.generation_config is not None else None
        self.eos = {tokenizer.eos_token_id, *(eos if isinstance(eos, list) else [eos])} - {None}
        self.waiting: queue.Queue[Job] = queue.Queue()
        self.rows: list[Row] = []
        self.cache = None
        self.mask = None  # [rows, cached positions]: 1 where a row has a real token
        self.dropped = 0  # requests whose client left before the end
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self.run, name="tuna-serve-batcher", daemon=True)

    def start(self) -> Batcher:
        self.thread.start()
        return self

    def close(self) -> None:
        self.closed.set()
        self.thread.join(timeout=10)

    def submit(self, job: Job) -> None:
        self.waiting.put(job)

    @property
    def load(self) -> dict:
        return {"running": len(self.rows), "waiting": self.waiting.qsize(), "dropped": self.dropped}

    def run(self) -> None:
        with torch.inference_mode():
            while not self.closed.is_set():
                try:
                    self.step()
                except Exception as exc:  # one bad step fails its requests, never the server
                    traceback.print_exc(file=sys.stderr)
                    for row in self.rows:
                        row.job.emit({"error": f"generation failed: {type(exc).__name__}: {exc}"})
                    self.rows, self.cache, self.mask = [], None, None

    def step(self) -> None:
        for row in self.rows:
            if row.job.cancelled.is_set():
                row.done, self.dropped = True, self.dropped + 1
        self.prune()
        jobs = self.take_waiting()
        if jobs:
            self.admit(jobs)
        elif self.rows:
            self.decode()
        self.prune()

    def take_waiting(self) -> list[Job]:
        """Waiting jobs that fit the batch; blocks briefly when nothing runs. A cache that cannot be joined
        (sliding-window layers) admits only into an empty batch."""
        if self.rows and not self.joinable():
            return []
        jobs: list[Job] = []
        if not self.rows:
            try:
                jobs.append(self.waiting.get(timeout=0.05))
            except queue.Empty:
                return []
        while len(self.rows) + len(jobs) < self.max_batch:
            try:
                jobs.append(self.waiting.get_nowait())
            except queue.Empty:
                break
        return [job for job in jobs if not job.cancelled.is_set()]

    def admit(self, jobs: list[Job]) -> None:
        from transformers import DynamicCache

        width = max(len(job.prompt) for job in jobs)
        ids = torch.full((len(jobs), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, job in enumerate(jobs):
            ids[i, width - len(job.prompt):] = torch.tensor(job.prompt)
            mask[i, width - len(job.prompt):] = 1
        cache = DynamicCache()
        rows = [Row(job, CompletionText(self.tokenizer, job.stop), seeded(job.seed)) for job in jobs]
        logits = self.forward(ids, mask, (mask.cumsum(1) - 1).clamp(min=0), cache, rows)
        self.join(cache, mask)
        self.rows += rows
        self.advance(rows, logits)

    def decode(self) -> None:
        ids = torch.tensor([[row.last] for row in self.rows])
        self.mask = torch.cat([self.mask, torch.ones(len(self.rows), 1, dtype=self.mask.dtype)], dim=1)
        positions = self.mask.sum(1, keepdim=True) - 1
        self.advance(self.rows, self.forward(ids, self.mask, positions, self.cache, self.rows))

    def forward(self, ids, mask, positions, cache, rows: list[Row]) -> torch.Tensor:
        options = {"adapter_names": [row.job.adapter or BASE for row in rows]} if self.adapters else {}
        out = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                         position_ids=positions.to(self.device), cache=cache, use_cache=True, logits_to_keep=1,
                         **options)
        return out.logits[:, -1].float().cpu()

    def advance(self, rows: list[Row], logits: torch.Tensor) -> None:
        for row, scores in zip(rows, logits):
            job = row.job
            token = int(scores.argmax()) if job.temperature == 0 else int(
                nucleus_sample(scores / job.temperature, job.top_p, row.generator))
            row.last, row.produced = token, row.produced + 1
            delta = "" if token in self.eos else row.text.push(token)
            if delta:
                job.emit({"text": delta})
            if token in self.eos or row.text.stopped or row.produced >= job.max_tokens:
                rest = row.text.finish()
                if rest:
                    job.emit({"text": rest})
                reason = "length" if not (token in self.eos or row.text.stopped) else "stop"
                job.emit({"done": reason, "tokens": row.produced})
                row.done = True

    def join(self, cache, mask) -> None:
        """Append a prefilled cache to the running one, left-padding the shorter to the longer."""
        if self.cache is None:
            self.cache, self.mask = cache, mask
            return
        width = max(self.mask.shape[1], mask.shape[1])
        for old, new in zip(self.cache.layers, cache.layers):
            old.keys = torch.cat([pad_left(old.keys, width, -2), pad_left(new.keys, width, -2)])
            old.values = torch.cat([pad_left(old.values, width, -2), pad_left(new.values, width, -2)])
        self.mask = torch.cat([pad_left(self.mask, width, 1), pad_left(mask, width, 1)])

    def joinable(self) -> bool:
        from transformers.cache_utils import DynamicLayer

        return self.cache is None or all(type(layer) is DynamicLayer for layer in self.cache.layers)

    def prune(self) -> None:
        """Drop the rows that are done, and the cache columns no remaining row uses."""
        keep = [i for i, row in enumerate(self.rows) if not row.done]
        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            self.cache, self.mask = None, None
            return
        self.cache.batch_select_indices(torch.tensor(keep, device=self.device))
        self.mask = self.mask[keep]
        first = int(self.mask.any(0).nonzero()[0])
        if first and self.joinable():
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[..., first:, :], layer.values[..., first:, :]
            self.mask = self.mask[:, first:]


def seeded(seed: int | None) -> torch.Generator:
    """A request's own random stream: `seed` makes its sampling repeatable whatever else is in the batch."""
    return torch.Generator().manual_seed(secrets.randbits(63) if seed is None else seed)


def pad_left(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - t.shape[dim]
    if missing == 0:
        return t
    pad = [0, 0] * (t.dim() - 1 - dim % t.dim()) + [missing, 0]
    return F.pad(t, pad)
