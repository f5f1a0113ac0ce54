"""The batcher's joined, padded and pruned KV cache must give each request exactly what it would get alone."""
import threading

import pytest
import torch
from transformers import AutoModelForCausalLM

from tuna.models.generate import generate_ids
from tuna.serve.batcher import Batcher, Job


def collect(prompt, max_tokens, **options):
    done = threading.Event()
    events = []

    def emit(event):
        events.append(event)
        if "done" in event or "error" in event:
            done.set()

    return Job(prompt=prompt, max_tokens=max_tokens, emit=emit, temperature=0.0, **options), events, done


@pytest.fixture
def model(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()


def test_requests_admitted_mid_batch_decode_as_if_alone(model, tiny_tokenizer):
    """Each row's next-token logits, at every step, equal those of one plain forward pass over its own
    prompt and tokens, though rows joined a running batch of other lengths and others left it."""
    prompts = [tiny_tokenizer(p).input_ids for p in ("The quick brown fox", "March 5, 2021 ->", "what is",
                                                     "January February March April May June")]
    batcher = Batcher(model, tiny_tokenizer, max_batch=8)
    batcher.eos = set()
    seen = {}  # job id -> [(token, logits)]
    advance = batcher.advance

    def record(rows, logits):
        advance(rows, logits)
        for row, scores in zip(rows, logits):
            seen.setdefault(id(row.job), []).append((row.last, scores))

    batcher.advance = record
    jobs = [collect(p, n) for p, n in zip(prompts, [24, 9, 17, 5])]
    batcher.submit(jobs[0][0])
    batcher.step()  # job 0 prefilled alone
    batcher.step()
    batcher.submit(jobs[1][0])
    batcher.submit(jobs[2][0])
    batcher.step()  # jobs 1 and 2 join a running batch of another length
    batcher.step()
    batcher.submit(jobs[3][0])
    while any(not done.is_set() for _, _, done in jobs):
        batcher.step()  # job 1 leaves early: the cache is pruned and compacted under the others
    for job, _, _ in jobs:
        tokens = [t for t, _ in seen[id(job)]]
        assert len(tokens) == job.max_tokens
        with torch.no_grad():
            plain = model(torch.tensor([job.prompt + tokens[:-1]])).logits[0, len(job.prompt) - 1:]
        torch.testing.assert_close(torch.stack([s for _, s in seen[id(job)]]), plain, atol=1e-4, rtol=1e-4)
    assert batcher.rows == [] and batcher.cache is None


def test_a_cancelled_request_leaves_the_batch_and_the_others_are_unchanged(model, tiny_tokenizer):
    prompts = [tiny_tokenizer(p).input_ids for p in ("The quick brown fox", "what is the capital")]
    expected = generate_ids(model, [prompts[1]], pad_id=0, eos_id=-1, max_new_tokens=12)[0]
    batcher = Batcher(model, tiny_tokenizer)
    batcher.eos = set()
    (gone, _, _), (kept, events, done) = collect(prompts[0], 50), collect(prompts[1], 12)
    batcher.submit(gone)
    batcher.submit(kept)
    batcher.step()
    gone.cancelled.set()
    batcher.step()
    assert len(batcher.rows) == 1 and batcher.cache.layers[0].keys.shape[0] == 1 and batcher.dropped == 1
    while not done.is_set():
        batcher.step()
    text = "".join(e.get("text", "") for e in events)
    assert text == tiny_tokenizer.decode(expected, skip_special_tokens=True)


def test_a_seed_makes_sampling_repeatable_whatever_shares_the_batch(model, tiny_tokenizer):
    prompt = tiny_tokenizer("The quick brown fox").input_ids

    def sample(with_neighbour):
        batcher = Batcher(model, tiny_tokenizer)
        job, events, done = collect(prompt, 10, seed=7)
        job.temperature = 1.0
        batcher.submit(job)
        if with_neighbour:
            batcher.submit(collect(prompt, 10, seed=8)[0])
        while not done.is_set():
            batcher.step()
        return "".join(e.get("text", "") for e in events)

    assert sample(False) == sample(True)


def test_an_eos_ends_a_request_with_finish_reason_stop(model, tiny_tokenizer):
    prompt = tiny_tokenizer("The quick brown fox").input_ids
    first = generate_ids(model, [prompt], pad_id=0, eos_id=-1, max_new_tokens=1)[0][0]
    batcher = Batcher(model, tiny_tokenizer)
    batcher.eos = {first}
    job, events, done = collect(prompt, 10)
    batcher.submit(job)
    while not done.is_set():
        batcher.step()
    assert events == [{"done": "stop", "tokens": 1}]


@torch.no_grad()
def test_rows_of_different_adapters_share_a_batch_and_get_their_own_weights(model, tiny_tokenizer):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False),
                                adapter_name="one")
    peft_model.add_adapter("two", LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    peft_model.eval()
    prompt = tiny_tokenizer("The quick brown fox").input_ids

    def alone(adapter):
        if adapter is None:
            with peft_model.disable_adapter():
                return generate_ids(peft_model, [prompt], pad_id=0, eos_id=-1, max_new_tokens=8)[0]
        peft_model.set_adapter(adapter)
        return generate_ids(peft_model, [prompt], pad_id=0, eos_id=-1, max_new_tokens=8)[0]

    expected = {name: tiny_tokenizer.decode(alone(name), skip_special_tokens=True) for name in ("one", "two", None)}
    assert len(set(expected.values())) == 3  # the adapters do differ
    batcher = Batcher(peft_model, tiny_tokenizer, adapters=True)
    batcher.eos = set()
    jobs = {name: collect(prompt, 8, adapter=name) for name in ("one", "two", None)}
    for job, _, _ in jobs.values():
        batcher.submit(job)
    batcher.step()
    assert len(batcher.rows) == 3  # one batch
    while any(not done.is_set() for _, _, done in jobs.values()):
        batcher.step()
    for name, (_, events, _) in jobs.items():
        assert "".join(e.get("text", "") for e in events) == expected[name]
