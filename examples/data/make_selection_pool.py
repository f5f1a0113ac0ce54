"""Write examples/data/dates_pool.jsonl: a pool where data selection should matter.

From the 400 clean dates examples (dates.jsonl): a quarter get a corrupted answer (a wrong date, a
truncated one, or off-task text), 40 near duplicates are added (the question re-spaced and re-cased),
and 12 very long, low-quality records (rambling answers of a few hundred words). Every record keeps
`quality` (clean, wrong_date, truncated, off_task, near_duplicate, rambling) so a selection can be
inspected afterwards; training ignores the key.

    python examples/data/make_selection_pool.py      # seeded: the same file every time
"""
from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).parent
OFF_TASK = ["I love sunny days at the beach.", "Sorry, I cannot help with that.", "The answer depends on context.",
            "Dates are a sweet fruit grown in the desert.", "Please provide more details."]
FILLER = ("well the thing about calendars is that they change and people often disagree about formats and "
          "there are many ways of writing things down so it is hard to say").split()


def main() -> None:
    rng = random.Random(0)
    rows = [json.loads(line) for line in (HERE / "dates.jsonl").read_text().splitlines()]
    pool = []
    for row in rows:
        answer = row["messages"][1]["content"]
        kind = rng.choices(["clean", "wrong_date", "truncated", "off_task"], weights=[75, 9, 8, 8])[0]
        if kind == "wrong_date":
            answer = f"{rng.randint(1900, 2030)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        elif kind == "truncated":
            answer = answer[: rng.randint(2, 7)]
        elif kind == "off_task":
            answer = rng.choice(OFF_TASK)
        pool.append(with_answer(row, answer, kind))
    for row in rng.sample(rows, 40):
        question = row["messages"][0]["content"]
        messages = [{"role": "user", "content": "  ".join(question.split(" ")).replace("Rewrite", "rewrite")},
                    row["messages"][1]]
        pool.append({"messages": messages, "quality": "near_duplicate"})
    for row in rng.sample(rows, 12):
        rambling = " ".join(rng.choice(FILLER) for _ in range(rng.randint(250, 400)))
        pool.append(with_answer(row, rambling, "rambling"))
    rng.shuffle(pool)
    (HERE / "dates_pool.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in pool))
    print(f"{len(pool)} records written to {HERE / 'dates_pool.jsonl'}")


def with_answer(row: dict, answer: str, kind: str) -> dict:
    return {"messages": [row["messages"][0], {"role": "assistant", "content": answer}], "quality": kind}


if __name__ == "__main__":
    main()
