"""Write the JSONL files of tuna's lm-evaluation-harness tasks (the YAMLs beside this file read them).

Every item is generated here from facts written for tuna (no benchmark's items are copied), seeded, so
the files are the same on every run:
- tuna_knowledge_mc.jsonl: general knowledge as lettered multiple choice (MMLU-style: the question,
  options A-D, and the model picks a letter);
- tuna_cloze.jsonl: the same facts as sentences to complete, each choice's own text scored as the
  continuation (the cloze formulation of ARC and HellaSwag in lm-eval);
- tuna_general.jsonl: the questions of tuna's general suite (`tuna.eval.general_questions`);
- tuna_dates.jsonl, tuna_arithmetic.jsonl: the demo tasks (`tuna.data.synthetic`), answers generated
  and scored by exact match; no question is one of examples/data's training or held-out files.

    python examples/harness/make_sets.py
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from tuna.data.synthetic import arithmetic_task, date_task
from tuna.eval.general_questions import QUESTIONS

HERE = Path(__file__).parent
DATA = HERE.parent / "data"

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Portugal": "Lisbon",
    "Netherlands": "Amsterdam", "Belgium": "Brussels", "Austria": "Vienna", "Switzerland": "Bern",
    "Poland": "Warsaw", "Czechia": "Prague", "Hungary": "Budapest", "Greece": "Athens", "Sweden": "Stockholm",
    "Norway": "Oslo", "Denmark": "Copenhagen", "Finland": "Helsinki", "Ireland": "Dublin", "Iceland": "Reykjavik",
    "Russia": "Moscow", "Ukraine": "Kyiv", "Turkey": "Ankara", "Egypt": "Cairo", "Kenya": "Nairobi",
    "Nigeria": "Abuja", "Ghana": "Accra", "Ethiopia": "Addis Ababa", "Morocco": "Rabat", "Senegal": "Dakar",
    "Japan": "Tokyo", "China": "Beijing", "South Korea": "Seoul", "India": "New Delhi", "Thailand": "Bangkok",
    "Vietnam": "Hanoi", "Indonesia": "Jakarta", "Philippines": "Manila", "Iran": "Tehran", "Iraq": "Baghdad",
    "Saudi Arabia": "Riyadh", "Pakistan": "Islamabad", "Nepal": "Kathmandu",
    "Australia": "Canberra", "New Zealand": "Wellington", "Canada": "Ottawa", "United States": "Washington, D.C.",
    "Mexico": "Mexico City", "Cuba": "Havana", "Brazil": "Brasilia", "Argentina": "Buenos Aires",
    "Chile": "Santiago", "Peru": "Lima", "Colombia": "Bogota", "Venezuela": "Caracas", "Ecuador": "Quito",
}
CONTINENTS = {
    "France": "Europe", "Poland": "Europe", "Norway": "Europe", "Greece": "Europe", "Portugal": "Europe",
    "Ireland": "Europe", "Hungary": "Europe", "Finland": "Europe", "Egypt": "Africa", "Kenya": "Africa",
    "Nigeria": "Africa", "Ghana": "Africa", "Ethiopia": "Africa", "Morocco": "Africa", "Senegal": "Africa",
    "Angola": "Africa", "Japan": "Asia", "China": "Asia", "India": "Asia", "Thailand": "Asia", "Vietnam": "Asia",
    "Nepal": "Asia", "Mongolia": "Asia", "Pakistan": "Asia", "Canada": "North America",
    "Mexico": "North America", "United States": "North America", "Cuba": "North America",
    "Guatemala": "North America", "Brazil": "South America", "Argentina": "South America",
    "Chile": "South America", "Peru": "South America", "Colombia": "South America", "Bolivia": "South America",
    "Uruguay": "South America", "Australia": "Oceania", "New Zealand": "Oceania", "Fiji": "Oceania",
    "Samoa": "Oceania",
}
SYMBOLS = {
    "hydrogen": "H", "helium": "He", "lithium": "Li", "carbon": "C", "nitrogen": "N", "oxygen": "O",
    "fluorine": "F", "neon": "Ne", "sodium": "Na", "magnesium": "Mg", "aluminium": "Al", "silicon": "Si",
    "phosphorus": "P", "sulfur": "S", "chlorine": "Cl", "argon": "Ar", "potassium": "K", "calcium": "Ca",
    "iron": "Fe", "copper": "Cu", "zinc": "Zn", "silver": "Ag", "tin": "Sn", "iodine": "I", "gold": "Au",
    "mercury": "Hg", "lead": "Pb", "uranium": "U", "nickel": "Ni", "cobalt": "Co", "platinum": "Pt",
    "tungsten": "W",
}
ANTONYMS = {
    "hot": "cold", "tall": "short", "early": "late", "full": "empty", "heavy": "light", "wet": "dry",
    "fast": "slow", "open": "closed", "rich": "poor", "loud": "quiet", "hard": "soft", "strong": "weak",
    "cheap": "expensive", "happy": "sad", "thick": "thin", "deep": "shallow", "wide": "narrow", "clean": "dirty",
    "young": "old", "first": "last", "above": "below", "inside": "outside", "win": "lose", "buy": "sell",
    "push": "pull", "arrive": "leave", "remember": "forget", "accept": "refuse", "always": "never",
    "friend": "enemy", "question": "answer", "beginning": "end", "north": "south", "east": "west",
    "day": "night", "true": "false",
}
PLURALS = {
    "mouse": "mice", "child": "children", "foot": "feet", "tooth": "teeth", "goose": "geese", "man": "men",
    "woman": "women", "person": "people", "ox": "oxen", "cactus": "cacti", "leaf": "leaves", "knife": "knives",
    "wolf": "wolves", "city": "cities", "box": "boxes", "sheep": "sheep", "fish": "fish", "bus": "buses",
}
PAST = {
    "go": "went", "see": "saw", "eat": "ate", "run": "ran", "swim": "swam", "write": "wrote", "take": "took",
    "give": "gave", "bring": "brought", "think": "thought", "buy": "bought", "teach": "taught", "catch": "caught",
    "fly": "flew", "drink": "drank", "sing": "sang", "begin": "began", "choose": "chose", "speak": "spoke",
    "break": "broke", "drive": "drove", "ride": "rode", "sleep": "slept", "leave": "left", "feel": "felt",
    "keep": "kept", "sit": "sat", "stand": "stood", "win": "won", "tell": "told",
}
UNITS = [  # (small unit, large unit, how many)
    ("millimetres", "centimetre", "10"), ("centimetres", "metre", "100"), ("metres", "kilometre", "1000"),
    ("grams", "kilogram", "1000"), ("milligrams", "gram", "1000"), ("millilitres", "litre", "1000"),
    ("seconds", "minute", "60"), ("minutes", "hour", "60"), ("hours", "day", "24"), ("days", "week", "7"),
    ("months", "year", "12"), ("years", "decade", "10"), ("years", "century", "100"), ("inches", "foot", "12"),
    ("feet", "yard", "3"), ("ounces", "pound", "16"), ("bits", "byte", "8"), ("items", "dozen", "12"),
]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
MONTH_DAYS = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]  # not a leap year
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
LETTERS = "ABCD"


def facts() -> list[dict]:
    """Every fact twice-phrased: `question` (for lettered choice), `stem` (a sentence to complete), the
    `answer`, and `pool`: the same kind of answer to draw wrong choices from."""
    items = []

    def add(question: str, stem: str, answer: str, pool) -> None:
        items.append({"question": question, "stem": stem, "answer": answer, "pool": sorted(set(pool) - {answer})})

    for country, capital in CAPITALS.items():
        add(f"What is the capital of {country}?", f"The capital of {country} is", capital, CAPITALS.values())
    for country, continent in CONTINENTS.items():
        add(f"On which continent is {country}?", f"{country} is a country in", continent, CONTINENTS.values())
    for element, symbol in SYMBOLS.items():
        add(f"What is the chemical symbol of {element}?", f"The chemical symbol of {element} is", symbol,
            SYMBOLS.values())
    for word, opposite in ANTONYMS.items():
        add(f"Which word means the opposite of '{word}'?", f"The opposite of {word} is", opposite,
            ANTONYMS.values())
    for word, plural in PLURALS.items():
        add(f"What is the plural of '{word}'?", f"One {word}, two", plural,
            [*PLURALS.values(), word + "s", word + "es"])
    for verb, past in PAST.items():
        add(f"What is the past tense of '{verb}'?", f"Today I {verb}; yesterday I", past,
            [*PAST.values(), verb + "ed"])
    for small, large, count in UNITS:
        add(f"How many {small} are in a {large}?", f"The number of {small} in a {large} is", count,
            [u[2] for u in UNITS])
    for i, month in enumerate(MONTHS):
        add(f"Which month comes after {month}?", f"The month after {month} is", MONTHS[(i + 1) % 12], MONTHS)
        add(f"Which month comes before {month}?", f"The month before {month} is", MONTHS[i - 1], MONTHS)
        add(f"How many days does {month} have in a year that is not a leap year?",
            f"In a year that is not a leap year, {month} has", f"{MONTH_DAYS[i]} days",
            ["28 days", "29 days", "30 days", "31 days"])
    for i, day in enumerate(WEEKDAYS):
        add(f"Which day of the week comes after {day}?", f"The day after {day} is", WEEKDAYS[(i + 1) % 7], WEEKDAYS)
        add(f"Which day of the week comes before {day}?", f"The day before {day} is", WEEKDAYS[i - 1], WEEKDAYS)
    for a in range(2, 13):
        for b in range(a, 13, 3):
            product = a * b
            near = [product + d for d in (-a, a, -b, b, 1, -1, 10, -10) if product + d > 0]
            add(f"What is {a} times {b}?", f"{a} times {b} equals", str(product), map(str, near))
    return items


def with_choices(fact: dict, rng: random.Random) -> tuple[list[str], int]:
    """Four choices (the answer and three wrong ones of its kind) in a random order, and the answer's index."""
    choices = rng.sample(fact["pool"], 3) + [fact["answer"]]
    rng.shuffle(choices)
    return choices, choices.index(fact["answer"])


def knowledge_mc(items: list[dict], rng: random.Random) -> list[dict]:
    rows = []
    for fact in items:
        choices, answer = with_choices(fact, rng)
        rows.append({"question": fact["question"], "choices": choices, "answer": answer})
    return rows


def cloze(items: list[dict], rng: random.Random) -> list[dict]:
    rows = []
    for fact in items:
        choices, answer = with_choices(fact, rng)
        rows.append({"stem": fact["stem"], "choices": choices, "answer": answer})
    return rows


def general() -> list[dict]:
    return [{"question": q, "choices": list(choices), "answer": answer} for q, choices, answer in QUESTIONS]


def questions(path: Path) -> set[str]:
    return {json.loads(line)["messages"][0]["content"] for line in path.read_text().splitlines() if line.strip()}


def unseen(rows: list[dict], seen: set[str], count: int) -> list[dict]:
    """The first `count` rows whose question is in no training file, each question once."""
    kept = {}
    for row in rows:
        question = row["messages"][0]["content"]
        if question not in seen and question not in kept:
            kept[question] = {"question": question, "answer": row["answer"]}
    if len(kept) < count:
        raise SystemExit(f"only {len(kept)} unseen questions; draw more")
    return list(kept.values())[:count]


def write(name: str, rows: list[dict]) -> None:
    (HERE / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    print(f"{name}.jsonl: {len(rows)} items")


def main() -> None:
    items = facts()
    write("tuna_knowledge_mc", knowledge_mc(items, random.Random(1)))
    write("tuna_cloze", cloze(items, random.Random(2)))
    write("tuna_general", general())
    dates_seen = questions(DATA / "dates.jsonl") | questions(DATA / "dates_heldout.jsonl")
    write("tuna_dates", unseen(date_task(400, seed=2026), dates_seen, 200))
    write("tuna_arithmetic", unseen(arithmetic_task(600, seed=2026, largest=50),
                                    questions(DATA / "arithmetic_train.jsonl"), 200))


if __name__ == "__main__":
    main()
