"""Building blocks of a self-contained HTML5 page: inline CSS, no scripts, nothing fetched.

`section` and `figure` take HTML (built by these helpers); every other text is escaped here.
"""
from __future__ import annotations

import math
from html import escape

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d2125; margin: 0 auto;
       max-width: 1280px; padding: 1.5rem 2rem 3rem; }
h1 { font-size: 1.5rem; margin: 0 0 1rem; }
h2 { font-size: 1.15rem; margin: 2rem 0 0.75rem; border-bottom: 1px solid #d9dde1; padding-bottom: 0.25rem; }
table { border-collapse: collapse; margin: 0 0 1rem; }
caption { text-align: left; font-weight: 600; padding: 0 0 0.35rem; }
th, td { padding: 0.25rem 0.8rem 0.25rem 0; border-bottom: 1px solid #eceff1; vertical-align: top; }
th { text-align: left; font-weight: 600; }
th.num, td.num { text-align: right; font-variant-numeric: tabular-nums; }
.figures { display: grid; grid-template-columns: repeat(auto-fill, minmax(460px, 1fr)); gap: 1rem 1.5rem; }
figure { margin: 0; }
figure svg { width: 100%; height: auto; display: block; }
figcaption { color: #5b636b; font-size: 0.85rem; }
pre { background: #f5f7f8; padding: 0.75rem 1rem; overflow-x: auto; font-size: 12px; line-height: 1.35; }
.note { color: #5b636b; }
.tokens { font: 12px/1.9 ui-monospace, monospace; white-space: pre-wrap; background: #f5f7f8; padding: 0.75rem 1rem; }
.tokens span { border-right: 1px solid #d9dde1; }
.tokens .trained { background: #b7e4c7; }
.tokens .special { color: #8e24aa; font-weight: 600; }
"""


def page(title: str, blocks: list[str]) -> str:
    """A complete HTML5 document holding `blocks` (HTML) under an <h1> of `title`."""
    body = "\n".join(blocks)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{escape(title)}</title>\n<style>{CSS}</style>\n</head>\n"
            f"<body>\n<h1>{escape(title)}</h1>\n{body}\n</body>\n</html>\n")


def section(title: str, body: str) -> str:
    return f"<section>\n<h2>{escape(title)}</h2>\n{body}\n</section>"


def table(headers: list[str], rows: list[list], *, caption: str | None = None, id: str | None = None) -> str:
    """Every cell escaped and formatted by `cell`; a column of numbers only is right-aligned."""
    numeric = [all(_is_number(row[i]) or row[i] is None for row in rows) and any(_is_number(row[i]) for row in rows)
               for i in range(len(headers))]
    align = [' class="num"' if n else "" for n in numeric]
    head = "".join(f"<th{a}>{escape(str(h))}</th>" for h, a in zip(headers, align))
    body = "\n".join("<tr>" + "".join(f"<td{a}>{escape(cell(v))}</td>" for v, a in zip(row, align)) + "</tr>"
                     for row in rows)
    caption_html = f"<caption>{escape(caption)}</caption>" if caption else ""
    id_html = f' id="{escape(id)}"' if id else ""
    return f"<table{id_html}>{caption_html}\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"


def figure(svg: str, caption: str) -> str:
    return f"<figure>\n{svg}\n<figcaption>{escape(caption)}</figcaption>\n</figure>"


def figures(items: list[str]) -> str:
    """Figures side by side, as many per row as the window fits."""
    return '<div class="figures">\n' + "\n".join(items) + "\n</div>"


def pre(text: str) -> str:
    return f"<pre>{escape(text)}</pre>"


def note(text: str) -> str:
    return f'<p class="note">{escape(text)}</p>'


def cell(value) -> str:
    """A value as table text: thousands separators for integers and large floats, else 4 significant digits."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value) or abs(value) >= 1e15:
            return f"{value:.4g}"
        if value == 0 or abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.3e}" if abs(value) < 1e-3 else f"{value:.4g}"
    return str(value)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
