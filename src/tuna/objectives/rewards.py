"""Reward functions for objectives that score generated text (GRPO; S3FT's judge).

A reward maps (completion, example) to a number; `example` is the training record (its `answer`,
`schema`, ...). Built in:
- `exact_match`: 1 if the answer extracted by `answer_pattern` (its first group; the whole text
  when the pattern is empty) equals the record's `answer` (else its `completion`) after trimming,
  whitespace collapsing and dropping a final period.
- `regex`: 1 if `reward_pattern` occurs in the completion (for a required format).
- `json`: 1 if the completion (code fences stripped) parses as JSON.
- `json_schema`: 1 if it parses and validates against the record's `schema` (jsonschema).
- `length_penalty`: 0 up to `length_target` characters, then −(excess / length_target), down to −1.
- `module:function`: any importable callable with the same signature.
The total is the weighted sum. A reward that raises or returns a non-number scores 0 for that
sample and is reported with the prompt's index; after `max_reward_errors` such failures the run
stops with a clear error instead of training on a silently broken signal.
"""
from __future__ import annotations

import importlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Callable

from pydantic import Field

from tuna.errors import UserError
from tuna.eval.scorers import json_valid as parses_as_json, without_fences
from tuna.sections import Section


class RewardKnobs(Section):
    """What the reward functions read: GRPO's rewards and S3FT's judge."""

    answer_pattern: str | None = Field(None, description="exact_match compares this regex's first group (unset: "
                                       "the whole completion)")
    reward_pattern: str = Field(r"^\s*-?\d+\s*$", description="the `regex` reward: 1 where this matches")
    length_target: int = Field(200, ge=1, description="length_penalty: characters allowed before the penalty")
    max_reward_errors: int = Field(10, ge=0, description="reward failures (raise / non-number) tolerated before stopping")


def _normalise(text: str) -> str:
    return " ".join(str(text).split()).strip().rstrip(".")


def exact_match(completion: str, example: dict, knobs) -> float:
    if knobs.answer_pattern:
        found = re.search(knobs.answer_pattern, completion, flags=re.DOTALL)
        if not found:
            return 0.0
        completion = found.group(1) if found.groups() else found.group(0)
    return float(_normalise(completion) == _normalise(reference_answer(example)))


def reference_answer(example: dict) -> str:
    return example["answer"] if "answer" in example else example["completion"]


def regex(completion: str, example: dict, knobs) -> float:
    return float(re.search(knobs.reward_pattern, completion, flags=re.DOTALL) is not None)


def json_valid(completion: str, example: dict, knobs) -> float:
    return parses_as_json(completion)


def json_schema(completion: str, example: dict, knobs) -> float:
    import jsonschema

    try:
        jsonschema.validate(json.loads(without_fences(completion)), example["schema"])
    except (ValueError, jsonschema.ValidationError):
        return 0.0
    return 1.0


def length_penalty(completion: str, example: dict, knobs) -> float:
    excess = len(completion) - knobs.length_target
    return -min(1.0, excess / knobs.length_target) if excess > 0 else 0.0


BUILT_IN = {"exact_match": exact_match, "regex": regex, "json": json_valid, "json_schema": json_schema,
            "length_penalty": length_penalty}
NEEDS = {"exact_match": ("answer", "completion"), "json_schema": ("schema",)}  # record fields a reward reads (any one)


def resolve(name: str) -> Callable:
    """A built-in reward, or `module:function` as (completion, example) -> number."""
    if name in BUILT_IN:
        return BUILT_IN[name]
    module, sep, attribute = name.partition(":")
    if not sep:
        raise UserError(f"unknown reward {name!r}; use one of {', '.join(BUILT_IN)} or module:function")
    try:
        function = getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError) as exc:
        raise UserError(f"reward {name!r} cannot be imported: {exc}") from None
    return lambda completion, example, knobs: function(completion, example)


@dataclass
class RewardErrors:
    limit: int
    seen: list[str] = field(default_factory=list)

    def add(self, index: int, name: str, problem: str) -> None:
        self.seen.append(f"prompt {index}: reward {name} {problem}")
        if len(self.seen) > self.limit:
            raise UserError(f"{len(self.seen)} reward failures, more than max_reward_errors={self.limit}; "
                            f"the last: {self.seen[-1]}")


def check_records(names: list[str], records: list[dict]) -> None:
    """Before any generation: every record carries the fields its rewards read."""
    for name in names:
        needed = NEEDS.get(name, ())
        missing = [i for i, r in enumerate(records) if needed and not any(k in r for k in needed)]
        if missing:
            raise UserError(f"reward {name} needs a `{' or '.join(needed)}` field; record {missing[0] + 1} has none")


def score(names: list[str], weights: list[float], completions: list[str], examples: list[dict], indices: list[int],
          knobs, errors: RewardErrors) -> list[float]:
    """The weighted total reward of each completion; failures score 0 and are counted."""
    functions = [resolve(name) for name in names]
    totals = []
    for completion, example, index in zip(completions, examples, indices):
        total = 0.0
        for name, weight, function in zip(names, weights, functions):
            try:
                value = function(completion, example, knobs)
            except Exception as exc:  # a user's reward may fail in any way; it must not end the run at once
                errors.add(index, name, f"raised {type(exc).__name__}: {exc}")
                continue
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                errors.add(index, name, f"returned {value!r}, not a finite number")
                continue
            total += weight * float(value)
        totals.append(total)
    return totals
