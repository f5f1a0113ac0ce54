"""What `tuna compare` writes beside results.json: summary.md (the table) and report.html (table and plots).

One row per variant: under `seeds`, the mean over its finished seeds, with a 95% t-interval over seeds
for each outcome; a variant that ran once gets a bootstrap interval over the task's items for its task
figures (the general suite's figures of one run have none). The trade-off plot puts each variant at
(forgetting, task gain), with its intervals as error bars: forgetting is the general-text perplexity
change in %, gain the task score change in points. A variant is on the Pareto front when no other
variant's means learned at least as much while forgetting no more (and are better in one); a variant
off the front whose intervals overlap, on both axes, those of a front variant that beats it is marked
as within noise of that variant.
"""
from __future__ import annotations

import json
import statistics
from html import escape
from pathlib import Path

from tuna.atomic import atomic_write_text
from tuna.eval.general import forgetting
from tuna.eval.intervals import bootstrap_interval, overlap, t_interval
from tuna.report import html, plots

HARNESS = "general harness change (pts)"  # accuracy change on lm-eval tasks (`general: {harness: [...]}`)
OUTCOMES = ["task after", "gain (pts)", "general ppl change", "general MC change (pts)", HARNESS]

HEADERS = ["variant", "status", "task after", "gain (pts)", "general ppl change", "general MC change (pts)",
           "trainable params", "peak memory (MiB)", "tokens/s", "train time (s)"]


def variant_row(name: str, entry: dict, base: dict) -> dict:
    """One variant's figures, derived from its raw scores and the base's."""
    if entry["status"] != "done":
        return {"variant": name, "status": f"failed: {entry['error']}"}
    scores = entry["scores"]
    row = {"variant": name, "status": "done", "task after": scores["task"],
           "gain (pts)": 100 * (scores["task"] - base["task"]),
           "trainable params": entry["trainable_params"], "peak memory (MiB)": entry["peak_memory_mb"],
           "tokens/s": entry["tokens_per_s"], "train time (s)": entry["train_seconds"]}
    if "general_ppl" in scores and "general_ppl" in base:
        change = forgetting(base, scores)
        row["general ppl change"] = change["general_ppl_change_pct"]
        row["general MC change (pts)"] = change["general_mc_change_pts"]
    if "general_harness" in scores and "general_harness" in base:
        row[HARNESS] = 100 * (scores["general_harness"] - base["general_harness"])
    return row


def columns(rows: list[dict]) -> list[str]:
    """The table's headers: the harness column only when something was scored through it."""
    return HEADERS + ([HARNESS] if any(HARNESS in row for row in rows) else [])


def variant_summaries(results: dict) -> list[dict]:
    """One row per variant: the means of its finished runs (one per seed), and `<outcome> ci` intervals."""
    base, groups = results["base"], {}
    for key, entry in results["variants"].items():
        groups.setdefault(key.partition("@seed")[0], []).append(entry)
    rows = []
    for name, entries in groups.items():
        done = [(e, variant_row(name, e, base)) for e in entries if e["status"] == "done"]
        if not done:
            rows.append({"variant": name, "status": f"failed: {entries[0]['error']}"})
            continue
        status = "done" if len(done) == len(entries) else f"{len(done)} of {len(entries)} runs done"
        row = {"variant": name, "status": status + (f" ({len(done)} seeds)" if results.get("seeds") else ""),
               "runs": len(done)}
        for header in [*HEADERS[2:], HARNESS]:
            values = [r[header] for _, r in done if r.get(header) is not None]
            if values:
                row[header] = statistics.fmean(values)
            if header in OUTCOMES and len(values) >= 2:
                row[f"{header} ci"] = t_interval(values)[1:]
        items = done[0][0]["scores"].get("task_items")
        if len(done) == 1 and items:
            low, high = bootstrap_interval(items)[1:]
            row["task after ci"] = (low, high)
            row["gain (pts) ci"] = (100 * (low - base["task"]), 100 * (high - base["task"]))
        rows.append(row)
    return rows


def dominates(a: dict, b: dict) -> bool:
    return (a["gain"] >= b["gain"] and a["forgetting"] <= b["forgetting"]
            and (a["gain"] > b["gain"] or a["forgetting"] < b["forgetting"]))


def pareto_front(points: list[dict]) -> list[str]:
    """Names of the points that no other point dominates (more gain, less forgetting)."""
    return [p["name"] for p in points if not any(dominates(q, p) for q in points if q is not p)]


def within_noise(points: list[dict], front: list[str]) -> dict[str, str]:
    """Variant off the front -> the front variant that beats it on the means, where both their intervals
    overlap (a point without intervals is never within noise)."""
    marks = {}
    for p in points:
        if p["name"] in front:
            continue
        for q in points:
            if q["name"] in front and dominates(q, p) and all(
                    f"{axis}_ci" in p and f"{axis}_ci" in q and overlap(p[f"{axis}_ci"], q[f"{axis}_ci"])
                    for axis in ("gain", "forgetting")):
                marks[p["name"]] = q["name"]
                break
    return marks


def formatted(header: str, value, interval: tuple[float, float] | None = None) -> str:
    if value is None:
        return "–"
    if isinstance(value, str):
        return value
    if header == "task after":
        text = f"{value:.1%}"
        return text + (f" [{interval[0]:.1%}, {interval[1]:.1%}]" if interval else "")
    if header in ("trainable params", "peak memory (MiB)", "tokens/s"):
        return f"{value:,.0f}"
    if header == "train time (s)":
        return f"{value:.0f}"
    signed = lambda v: f"{round(v, 1) or 0.0:+.1f}"  # a change that rounds to zero shows as +0.0, not -0.0
    unit = "%" if header == "general ppl change" else ""
    return f"{signed(value)}{unit}" + (f" [{signed(interval[0])}, {signed(interval[1])}]" if interval else "")


def table_rows(rows: list[dict]) -> list[list[str]]:
    return [[formatted(h, row.get(h), row.get(f"{h} ci")) for h in columns(rows)] for row in rows]


def per_run(results: dict) -> list[dict]:
    """One row per run, named `<variant>@seed<k>`."""
    return [variant_row(key, entry, results["base"]) for key, entry in results["variants"].items()]


def base_line(base: dict) -> str:
    parts = [f"task {base['task']:.1%}"]
    if "general_ppl" in base:
        parts += [f"general-text perplexity {base['general_ppl']:.2f}", f"general MC {base['general_mc']:.1%}"]
    if "general_harness" in base:
        parts.append(f"general harness {base['general_harness']:.1%}")
    return "Base model: " + ", ".join(parts) + "."


def markdown_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return lines + ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]


def front_note(points: list[dict]) -> str:
    front = pareto_front(points)
    if not front:
        return ""
    noise = within_noise(points, front)
    return (f"Pareto front (gain vs forgetting, on means): {', '.join(front)}."
            + (" Within noise of the front (intervals overlap on both axes): "
               + ", ".join(f"{n} (of {q})" for n, q in noise.items()) + "." if noise else ""))


def summary_markdown(results: dict) -> str:
    summaries = variant_summaries(results)
    lines = markdown_table(columns(summaries), table_rows(summaries))
    if results.get("seeds"):
        runs = per_run(results)
        lines += ["", f"Per seed ({', '.join(map(str, results['seeds']))}):", "",
                  *markdown_table(columns(runs), table_rows(runs))]
    intervals = "Intervals are 95%: " + ("t over seeds." if results.get("seeds") else
                                         "bootstrap over the task's items (one run per variant).")
    note = front_note(tradeoff_points(summaries))
    return base_line(results["base"]) + " " + intervals + "\n\n" + "\n".join(lines) + "\n" + \
        (f"\n{note}\n" if note else "")


def tradeoff_points(summaries: list[dict]) -> list[dict]:
    points = []
    for row in summaries:
        if row.get("runs") and "general ppl change" in row:
            point = {"name": row["variant"], "forgetting": row["general ppl change"], "gain": row["gain (pts)"]}
            for axis, header in (("forgetting", "general ppl change"), ("gain", "gain (pts)")):
                if f"{header} ci" in row:
                    point[f"{axis}_ci"] = row[f"{header} ci"]
            points.append(point)
    return points


def report_html(results: dict) -> str:
    summaries = variant_summaries(results)
    caption = "One row per variant, same budget" + (
        f"; means over seeds {', '.join(map(str, results['seeds']))} with 95% t-intervals" if results.get("seeds")
        else "; 95% bootstrap intervals over the task's items")
    blocks = [html.section("Summary", f"<p>{escape(base_line(results['base']))}</p>"
                           + html.table(columns(summaries), table_rows(summaries), caption=caption))]
    if results.get("seeds"):
        runs = per_run(results)
        blocks.append(html.section("Per seed", html.table(columns(runs), table_rows(runs), caption="One row per run")))
    curves = {name: [tuple(p) for p in e["loss_curve"]] for name, e in results["variants"].items()
              if e["status"] == "done" and e.get("loss_curve")}
    if curves:
        blocks.append(html.section("Training loss", html.figure(
            plots.line_chart(curves, title="train/loss", xlabel="step", ylabel="loss"),
            "Training loss of every finished variant, per optimizer step")))
    points = tradeoff_points(summaries)
    if points:
        front = pareto_front(points)
        blocks.append(html.section("Learning vs forgetting", html.figure(
            plots.tradeoff_chart(points, x="forgetting", y="gain", xlabel="general-text perplexity change (%)",
                                 ylabel="task gain (points)", front=front),
            f"Up and to the left is better; bars are 95% intervals. {front_note(points)}")))
    failed = {n: e["error"] for n, e in results["variants"].items() if e["status"] != "done"}
    if failed:
        blocks.append(html.section("Failed variants", html.pre("\n".join(f"{n}: {e}" for n, e in failed.items()))))
    blocks.append(html.section("Results", html.pre(json.dumps(
        {k: v for k, v in results.items() if k != "variants"}, indent=1))))
    return html.page("tuna compare", blocks)


def write_compare_outputs(out: Path, results: dict) -> None:
    if results.get("base") is None:
        return
    atomic_write_text(out / "summary.md", summary_markdown(results))
    atomic_write_text(out / "report.html", report_html(results))
