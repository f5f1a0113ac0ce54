import sys
from types import SimpleNamespace

import pytest
import torch

from tuna.errors import UserError
from tuna.models.generate import generate_ids
from tuna.objectives.grpo import group_advantages, policy_loss, sequence_batch, token_logps
from tuna.objectives.rewards import RewardErrors, check_records, score

KNOBS = SimpleNamespace(answer_pattern=r"<answer>(.*?)</answer>", reward_pattern=r"^\d+$", length_target=10)


def test_advantages_are_normalised_within_each_group():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 0.5, 1.0, 0.5], [2.0, 2.0, 2.0, 2.0]])
    advantages = group_advantages(rewards)
    torch.testing.assert_close(advantages.mean(1), torch.zeros(3), atol=1e-6, rtol=0)
    torch.testing.assert_close(advantages[:2].std(1), torch.ones(2), atol=1e-3, rtol=0)
    assert advantages[2].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert advantages[0, 0] > 0 > advantages[0, 1]


def test_policy_gradient_is_the_advantage_per_token_and_equal_rewards_give_none():
    logps = torch.log(torch.tensor([[0.5, 0.25, 0.9], [0.3, 0.6, 0.2]])).requires_grad_()
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    advantages = torch.tensor([2.0, -1.0])
    per_sequence, kl = policy_loss(logps, logps.detach(), advantages, mask, clip=0.2, kl_beta=0.0)
    per_sequence.sum().backward()
    expected = -advantages[:, None] * mask / mask.sum(1, keepdim=True)  # ∂(−ρA/|o|)/∂logπ at ρ = 1
    torch.testing.assert_close(logps.grad, expected)
    assert kl.abs().max() == 0  # the reference equals the policy

    logps.grad = None
    equal = group_advantages(torch.tensor([[0.7, 0.7]])).flatten()
    policy_loss(logps, logps.detach(), equal, mask, clip=0.2, kl_beta=0.0)[0].sum().backward()
    assert logps.grad.abs().max() == 0


def test_kl_penalty_is_the_k3_estimator():
    logps = torch.log(torch.tensor([[0.5, 0.2]]))
    reference = torch.log(torch.tensor([[0.25, 0.4]]))
    mask = torch.ones(1, 2)
    per_sequence, kl = policy_loss(logps, reference, torch.zeros(1), mask, clip=0.2, kl_beta=0.5)
    r = reference.exp() / logps.exp()
    expected = (r - r.log() - 1).mean()
    assert float(kl) == pytest.approx(float(expected))
    assert float(per_sequence) == pytest.approx(0.5 * float(expected))


def test_built_in_rewards():
    example = {"answer": "42", "schema": {"type": "object", "required": ["a"]}}
    errors = RewardErrors(limit=5)
    got = score(["exact_match"], [1.0], ["so <answer> 42 </answer>", "<answer>41</answer>", "42"],
                [example] * 3, [0, 1, 2], KNOBS, errors)
    assert got == [1.0, 0.0, 0.0]
    assert score(["regex"], [1.0], ["123", "x123"], [example] * 2, [0, 1], KNOBS, errors) == [1.0, 0.0]
    assert score(["json", "json_schema"], [1.0, 2.0], ['```json\n{"a": 1}\n```', '{"b": 1}', "{nope"],
                 [example] * 3, [0, 1, 2], KNOBS, errors) == [3.0, 1.0, 0.0]
    assert score(["length_penalty"], [1.0], ["x" * 10, "x" * 15, "x" * 100], [example] * 3, [0, 1, 2], KNOBS,
                 errors) == [0.0, -0.5, -1.0]
    assert errors.seen == []
    with pytest.raises(UserError, match="needs a `schema` field; record 2"):
        check_records(["json_schema"], [example, {"answer": "1"}])


def flaky(completion, example):
    if completion == "boom":
        raise ValueError("cannot parse")
    return "high" if completion == "text" else 1


def test_a_failing_reward_scores_zero_is_reported_and_stops_the_run_past_the_limit(monkeypatch):
    monkeypatch.setitem(sys.modules, "user_rewards", SimpleNamespace(flaky=flaky))
    errors = RewardErrors(limit=2)
    got = score(["user_rewards:flaky"], [1.0], ["ok", "boom", "text"], [{}] * 3, [7, 8, 9], KNOBS, errors)
    assert got == [1.0, 0.0, 0.0]
    assert errors.seen == ["prompt 8: reward user_rewards:flaky raised ValueError: cannot parse",
                           "prompt 9: reward user_rewards:flaky returned 'high', not a finite number"]
    with pytest.raises(UserError, match="3 reward failures, more than max_reward_errors=2; the last: prompt 3"):
        score(["user_rewards:flaky"], [1.0], ["boom"], [{}], [3], KNOBS, errors)
    with pytest.raises(UserError, match="unknown reward"):
        score(["nonsense"], [1.0], ["x"], [{}], [0], KNOBS, errors)


def test_sampled_groups_end_at_eos_and_rows_label_only_the_completion(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    prompts = [[5, 6, 7], [8, 9]]
    completions = generate_ids(model, prompts, sample=True, group=3, max_new_tokens=6, temperature=1.0, top_p=1.0,
                               pad_id=0, eos_id=2)
    assert len(completions) == 6
    assert all(0 < len(c) <= 6 and (2 not in c[:-1]) for c in completions)
    batch = sequence_batch(prompts, completions, group=3, pad_id=0)
    row = 4  # the second prompt's second sample
    n = len(prompts[1]) + len(completions[row])
    assert batch["input_ids"][row, :n].tolist() == prompts[1] + completions[row]
    assert batch["labels"][row, len(prompts[1]) : n].tolist() == completions[row]
    assert (batch["labels"][row, : len(prompts[1])] == -100).all() and (batch["labels"][row, n:] == -100).all()
    logps, mask = token_logps(model(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits, batch["labels"])
    assert mask[row].sum() == len(completions[row])


def test_grpo_trains_end_to_end_logs_its_signals_and_checks_data_first(tiny_model_dir, tiny_recipe, tmp_path,
                                                                       monkeypatch):
    import json

    from tuna.train.loop import train

    rows = [{"prompt": f"what is {i} + {i}?", "answer": str(2 * i)} for i in range(12)]
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setitem(sys.modules, "length_reward", SimpleNamespace(reward=lambda c, e: len(c) / 10))
    recipe = tiny_recipe(objective="grpo", data={"path": str(data), "eval_split": 0.25},
                         grpo={"group_size": 3, "max_new_tokens": 5, "rewards": ["length_reward:reward"]},
                         train={"max_steps": 2, "micro_batch_size": 2}, eval={"every": 0})
    result = train(recipe, progress=False)
    records = [json.loads(line) for line in open(f"{result.run_dir}/metrics.jsonl")]
    for key in ("train/reward", "train/reward_std", "train/kl", "train/completion_length",
                "train/frac_reward_zero_std"):
        assert key in records[0], key
    assert records[0]["train/kl"] == pytest.approx(0.0, abs=1e-6)  # the policy starts as the reference
    assert 0 < records[0]["train/completion_length"] <= 5 and records[0]["train/tokens"] > 0
    assert "eval/reward" in records[-1]

    with pytest.raises(UserError, match="reward exact_match needs a `answer or completion` field"):
        train(tiny_recipe(objective="grpo", data={"path": str(write_rows(tmp_path, [{"prompt": "hi"}] * 4))},
                          output_dir=str(tmp_path / "x")), progress=False)


def write_rows(tmp_path, rows):
    import json

    path = tmp_path / "no_answers.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


class TableModel(torch.nn.Module):
    """Logits from a learnable table indexed by the input token: a model whose gradient is easy to check."""

    def __init__(self, vocab: int = 7, seed: int = 0):
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(seed)))

    def forward(self, input_ids, attention_mask=None, use_cache=False):
        return SimpleNamespace(logits=self.table[input_ids])


def rolled_out(group: int = 2) -> dict:
    """Two prompts × `group` completions of different lengths, as `rollout` leaves them."""
    prompts = [[1, 2], [3]]
    completions = [[4, 5, 6], [5], [6, 6], [4, 2, 2, 5]][: 2 * group]
    batch = sequence_batch(prompts, completions, group, pad_id=0)
    rewards = torch.tensor([[1.0, 0.0], [0.5, 2.0]])
    completion_tokens = float((batch["labels"][:, 1:] != -100).sum())
    return {**batch, "prompt_ids": prompts, "rewards": rewards, "advantages": group_advantages(rewards).flatten(),
            "step_tokens": completion_tokens, "step_micro_batches": 1.0}


def grpo_context(**knobs):
    from tuna.objectives.base import ObjectiveContext
    from tuna.objectives.grpo import GrpoKnobs

    reference = TableModel(seed=1)
    return ObjectiveContext(GrpoKnobs(group_size=2, max_new_tokens=4, **knobs),
                            reference=lambda rows: reference(rows["input_ids"]).logits.detach())


def by_definition(model, ctx, batch, temperature: float):
    """TRL's definition, written out: log-probs of logits / T for policy and reference, k3 KL, ratio 1."""
    labels = batch["labels"][:, 1:]
    mask = (labels != -100).float()
    logits = model(batch["input_ids"]).logits[:, :-1] / temperature
    logp = torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    ref = torch.log_softmax(ctx.reference(batch)[:, :-1] / temperature, -1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    a = batch["advantages"][:, None]
    kl = torch.exp(ref - logp) - (ref - logp) - 1
    per_token = -(torch.exp(logp - logp.detach()) * a - ctx.knobs.kl_beta * kl) * mask
    return per_token, mask, kl


def test_log_probs_use_the_sampling_temperature(monkeypatch):
    from tuna.objectives.grpo import loss

    ctx, batch = grpo_context(temperature=0.7, kl_beta=0.3), rolled_out()
    model = TableModel()
    value, stats = loss(model, batch, 2.0, ctx)
    value.backward()
    ours = model.table.grad.clone()

    model.table.grad = None
    per_token, mask, kl = by_definition(model, ctx, batch, temperature=0.7)
    expected = ((per_token.sum(1) / mask.sum(1)).view(2, 2).mean(1)).sum() / 2.0
    expected.backward()
    assert float(value) == pytest.approx(float(expected), rel=1e-6)
    torch.testing.assert_close(ours, model.table.grad)
    assert stats["kl"] == pytest.approx(float((kl * mask).sum() / mask.sum()))  # a token mean, as TRL logs it

    model.table.grad = None
    per_token_t1, mask, _ = by_definition(model, ctx, batch, temperature=1.0)
    ((per_token_t1.sum(1) / mask.sum(1)).view(2, 2).mean(1).sum() / 2.0).backward()
    assert not torch.allclose(ours, model.table.grad)  # the temperature matters to the gradient


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_each_loss_type_aggregates_as_its_paper_defines(loss_type):
    from tuna.objectives.grpo import aggregate

    per_token = torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 0.0], [1.0, 1.0, 1.0], [4.0, 0.0, 0.0]])
    mask = (per_token != 0).float()
    lengths = mask.sum(1)
    formulas = {  # one micro-batch of 2 prompts × 2 completions that is the whole step
        "grpo": ((per_token.sum(1) / lengths).view(2, 2).mean(1)).sum() / 2,  # mean of per-sequence means
        "bnpo": per_token.sum() / mask.sum(),  # a token mean of the (micro-)batch
        "dr_grpo": per_token.sum() / (4 * 5),  # sequences × max_new_tokens, a constant
        "dapo": per_token.sum() / mask.sum(),  # tokens of the whole step
    }
    got = aggregate(per_token, mask, loss_type, group=2, step_prompts=2, max_new_tokens=5, step_micro_batches=1,
                    step_tokens=float(mask.sum()))
    assert float(got) == pytest.approx(float(formulas[loss_type]))


def test_dapo_divides_by_the_whole_steps_tokens_so_accumulation_is_exact():
    from tuna.objectives.grpo import aggregate

    per_token = torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 0.0], [1.0, 1.0, 1.0], [4.0, 0.0, 0.0]])
    mask = (per_token != 0).float()
    whole = aggregate(per_token, mask, "dapo", group=2, step_prompts=2, max_new_tokens=5, step_micro_batches=1,
                      step_tokens=float(mask.sum()))
    halves = sum(aggregate(per_token[i : i + 2], mask[i : i + 2], "dapo", group=2, step_prompts=2, max_new_tokens=5,
                           step_micro_batches=2, step_tokens=float(mask.sum())) for i in (0, 2))
    assert float(halves) == pytest.approx(float(whole))
    bnpo_halves = sum(aggregate(per_token[i : i + 2], mask[i : i + 2], "bnpo", group=2, step_prompts=2,
                                max_new_tokens=5, step_micro_batches=2, step_tokens=0.0) for i in (0, 2))
    assert float(bnpo_halves) != pytest.approx(float(whole))  # bnpo's normaliser is the micro-batch's, as TRL's


def test_dr_grpo_does_not_scale_advantages_by_the_std_unless_asked(monkeypatch):
    from tuna.objectives import grpo

    rewards = torch.tensor([[1.0, 0.0, 0.0, 3.0]])
    assert torch.allclose(group_advantages(rewards, scale=False), rewards - rewards.mean())
    seen = {}
    monkeypatch.setattr(grpo, "generate_ids", lambda model, prompts, **kw: [[4, 2]] * (len(prompts) * kw["group"]))
    monkeypatch.setattr(grpo, "total_rewards", lambda texts, *a: [1.0, 0.0, 0.0, 3.0])
    tokenizer = SimpleNamespace(pad_token_id=0, eos_token_id=2, batch_decode=lambda ids, **kw: ["x"] * len(ids))
    batch = {"prompt_ids": [[1]], "examples": [{}], "indices": [0]}
    for loss_type, scale in (("dr_grpo", None), ("grpo", None), ("dr_grpo", True)):
        ctx = SimpleNamespace(knobs=grpo.GrpoKnobs(group_size=4, loss_type=loss_type, scale_rewards=scale),
                              tokenizer=tokenizer, reward_errors=None, sum_over_ranks=lambda v: v)
        seen[(loss_type, scale)] = grpo.rollout(None, [batch], ctx)[0]["advantages"]
    assert torch.allclose(seen[("dr_grpo", None)], torch.tensor([0.0, -1.0, -1.0, 2.0]))
    assert torch.allclose(seen[("grpo", None)], group_advantages(rewards).flatten())
    assert torch.allclose(seen[("dr_grpo", True)], seen[("grpo", None)])
