"""Proxy-tuning: logits are large + (expert − anti), in the forward pass and at every generation step."""
from __future__ import annotations

import pytest
import torch

from tests.conftest import build_model
from tuna.cli import main
from tuna.errors import UserError
from tuna.models.load import load_base
from tuna.models.proxy import ProxyTuned


@pytest.fixture(scope="module")
def trio(tmp_path_factory, tiny_model_dir):
    """Three tiny random Llamas sharing the tiny tokenizer: a 'large' one, an expert and its anti-expert."""
    import shutil

    root = tmp_path_factory.mktemp("proxy")
    dirs = {}
    for name, seed in (("large", 1), ("expert", 2), ("anti", 3)):
        dirs[name] = root / name
        shutil.copytree(tiny_model_dir, dirs[name])
        build_model(dirs[name], "llama", len(load_base(str(tiny_model_dir))[1]), seed=seed)
    return dirs


def models(trio):
    return [load_base(str(trio[name]))[0].eval() for name in ("large", "expert", "anti")]


def test_the_forward_logits_are_large_plus_expert_minus_anti(trio):
    large, expert, anti = models(trio)
    ids = torch.randint(3, 300, (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding, as generation has it
    with torch.no_grad():
        got = ProxyTuned(large, expert, anti)(input_ids=ids, attention_mask=mask).logits
        parts = [m(input_ids=ids, attention_mask=mask).logits for m in (large, expert, anti)]
    torch.testing.assert_close(got, parts[0] + parts[1] - parts[2])


def test_greedy_generation_follows_the_combined_logits_step_by_step(trio):
    large, expert, anti = models(trio)
    proxy = ProxyTuned(large, expert, anti)
    prompt = torch.tensor([[0, 0, 5, 6, 7], [8, 9, 10, 11, 12]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    out = proxy.generate(input_ids=prompt, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0,
                         eos_token_id=-1)
    expected, current, current_mask = [], prompt, mask  # no cache: every step recomputed from scratch
    with torch.no_grad():
        for _ in range(6):
            positions = (current_mask.cumsum(1) - 1).clamp(min=0)
            logits = sum(sign * m(input_ids=current, attention_mask=current_mask, position_ids=positions).logits[:, -1]
                         for sign, m in ((1, large), (1, expert), (-1, anti)))
            token = logits.argmax(-1, keepdim=True)
            expected.append(token)
            current = torch.cat([current, token], 1)
            current_mask = torch.cat([current_mask, torch.ones_like(token)], 1)
    assert torch.equal(out[:, 5:], torch.cat(expected, 1))
    plain = large.generate(input_ids=prompt, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0,
                           eos_token_id=-1)
    assert not torch.equal(plain, out)  # the expert's shift changed what the large model says


def test_proxy_tuning_through_the_cli_and_its_refusals(trio, tmp_path, capsys, tiny_dirs):
    assert main(["generate", "--model", str(trio["large"]), "--proxy", str(trio["expert"]), "--anti",
                 str(trio["anti"]), "--prompt", "hello", "--max-new-tokens", "3"]) == 0
    capsys.readouterr()
    assert main(["generate", "--model", str(trio["large"]), "--proxy", str(trio["expert"]), "--prompt", "x"]) == 2
    assert "needs both --proxy EXPERT and --anti BASE" in capsys.readouterr().err
    other = tmp_path / "other"
    build_model(other, "llama", 123)

    with pytest.raises(UserError, match="one vocabulary"):
        ProxyTuned(load_base(str(trio["large"]))[0], load_base(str(trio["expert"]))[0],
                   __import__("transformers").AutoModelForCausalLM.from_pretrained(other))
