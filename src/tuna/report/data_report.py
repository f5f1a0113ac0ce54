"""The HTML of `tuna data inspect --html`: self-contained (inline CSS and SVG), like the run report. Each
token of an example is a span; trained tokens have the class `trained`, special tokens `special`."""
from __future__ import annotations

from html import escape
from pathlib import Path

from tuna.atomic import atomic_write_text
from tuna.report import html, plots


def tokens_html(tokens) -> str:
    spans = []
    for token in tokens:
        classes = " ".join(c for c, on in (("trained", token.trained), ("special", token.special)) if on)
        text = f"⟨{token.text}⟩" if token.special else token.text
        spans.append(f'<span class="{classes}">{escape(text)}</span>' if classes else f"<span>{escape(text)}</span>")
    return '<div class="tokens">' + "".join(spans) + "</div>"


def write_data_report(found, out: Path) -> Path:
    stats = found.length_summary()
    summary = html.table(["", ""], [["source", found.source], ["format", found.format], ["records", len(found.lengths)],
                                    ["tokens: min", stats["min"]], ["median", float(stats["median"])],
                                    ["p95", stats["p95"]], ["max", stats["max"]],
                                    [f"over data.max_tokens ({found.max_tokens})", found.over_limit],
                                    ["blank answers", len(found.empty)], ["exact duplicates", len(found.duplicates)],
                                    ["no trained token", len(found.no_target)]])
    defects = [[what, origin] for what, origins in (("blank answer", found.empty), ("no trained token", found.no_target))
               for origin in origins[:50]] + [["duplicate", f"{a} (of {b})"] for a, b in found.duplicates[:50]]
    blocks = [html.section("Summary", summary + (html.note(f"rendered for training: {found.notes}") if found.notes else "")),
              html.section("Lengths", html.figure(plots.histogram(found.lengths, title="", xlabel="tokens per record"),
                                                  "rendered length of every record, in tokens")),
              html.section("Defects", html.table(["defect", "record"], defects) if defects else html.note("none found"))]
    for example in found.examples:
        blocks.append(html.section(example.title, html.note(
            f"{sum(t.trained for t in example.tokens)} of {len(example.tokens)} tokens trained (highlighted); "
            f"{example.final_eos(found.eos)}") + tokens_html(example.tokens)))
    atomic_write_text(out, html.page(f"Data inspection: {found.source}", blocks))
    return out
