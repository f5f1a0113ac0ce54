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
