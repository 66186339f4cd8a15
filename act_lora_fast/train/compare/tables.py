"""How a comparison is shown: the Markdown table, the score-against-step-time plot, the files written."""
import math
import os

from ..._io import new_figure, save_figure, write_json, write_text


def _fmt(value, spec=".2f", missing="–"):
    return missing if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _ci(ci, spec=".2f"):
    return f"[{_fmt(ci[0], spec)}, {_fmt(ci[1], spec)}]" if ci else "–"


def format_table(rows, title=None, *, score_name="score", higher_is_better=True):
    """The Markdown table: score (mean ± CI half-width), Δ vs all (mean, CI, p), step time, memory, parameters,
    device-hours (a run's wall time plus its profiling, mean over seeds) and the smallest selection margin.

    A score where lower is better (a text task's eval loss) is headed so ("eval loss ↓"), and perplexity
    gets a column when the rows have it."""
    label = score_name if higher_is_better else f"{score_name} ↓"
    digits = 2 if higher_is_better else 4  # GLUE points vs a loss in nats
    ppl = any(row.get("perplexity") is not None for row in rows)
    lines = [f"### {title}", ""] if title else []
    lines += [f"| variant | layers | {label} | Δ {score_name} | Δ 95 % CI | p |{' ppl |' if ppl else ''} step ms | "
              "Δ time % | peak mem MiB | LoRA params | device-h | margin |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if ppl else "")]
    for row in rows:
        layers = row["layers"]
        if layers is None:
            shown = "per task"
        elif layers and isinstance(layers[0], list):
            shown = "; ".join(",".join(map(str, l)) for l in layers[:3]) + (" …" if len(layers) > 3 else "")
        else:
            shown = ",".join(map(str, layers))
        score = _fmt(row["score"], f".{digits}f")
        if row.get("ci95") and row.get("n", 1) > 1:
            score += f" ± {_fmt((row['ci95'][1] - row['ci95'][0]) / 2, f'.{digits}f')}"
        margin = row.get("score_margin")
        margins = [m for m in (margin or []) if m is not None]
        lines.append(
            f"| {row['variant']} | {shown} | {score} | {_fmt(row['delta_score'], f'+.{digits}f')} | "
            f"{_ci(row.get('delta_ci95') if row.get('n', 1) > 1 else None, f'+.{digits}f')} | "
            f"{_fmt(row.get('p_value'), '.3f')} | " + (f"{_fmt(row.get('perplexity'), '.2f')} | " if ppl else "") +
            f"{_fmt(row['step_ms'], '.1f')} | {_fmt(row['delta_time_pct'], '+.1f')} | "
            f"{_fmt(row['peak_memory_bytes'] / 2**20 if row['peak_memory_bytes'] is not None else None, '.1f')} | "
            f"{row['lora_parameters']:,} | {_fmt(row.get('device_hours'), '.4f')} | "
            f"{_fmt(min(margins) if margins else None, '+.3f')} |")
    better = "" if higher_is_better else f" {score_name}: lower is better, so Δ < 0 is an improvement."
    lines += ["", "Δ: paired against all-layer LoRA (same seeds)." + better + " margin: (lowest chosen − highest "
              "unchosen block score) / mean score, the smallest over seeds; near 0 a tie-break picked the blocks."]
    return "\n".join(lines)


def pareto_front(rows, *, higher_is_better=True):
    """The rows no other row beats on both mean step time (lower) and mean score (higher, or lower for a loss),
    fastest first."""
    sign = 1 if higher_is_better else -1
    front = [row for row in rows if not any(
        o is not row and o["step_ms"] <= row["step_ms"] and sign * o["score"] >= sign * row["score"]
        and (o["step_ms"] < row["step_ms"] or o["score"] != row["score"]) for o in rows)]
    return sorted(front, key=lambda row: row["step_ms"])


def plot_compare(rows, path, title=None, *, score_name="score", higher_is_better=True):
    """Score (mean ± 95 % CI over seeds) against median step time, one point per variant; the Pareto front
    (no other variant both faster and better on the mean; better is lower for a loss) is drawn as a line."""
    fig, (ax,) = new_figure(1, width=7, height=4.5)
    points = [row for row in rows if row["score"] is not None and row["step_ms"] is not None]
    for index, row in enumerate(points):
        marker = "s" if row["selection"] == "all" else ("o" if row["selection"] == "activation" else "^")
        ci = row.get("ci95")
        yerr = None
        if ci and row.get("n", 1) > 1:
            yerr = [[row["score"] - ci[0]], [ci[1] - row["score"]]]
        ax.errorbar(row["step_ms"], row["score"], yerr=yerr, fmt=marker, capsize=3, ms=6)
        ax.annotate(row["variant"], (row["step_ms"], row["score"]), fontsize=7,
                    xytext=(5, 4) if index % 2 == 0 else (5, -10), textcoords="offset points")
    front = pareto_front(points, higher_is_better=higher_is_better)
    if len(front) > 1:
        ax.plot([r["step_ms"] for r in front], [r["score"] for r in front], "--", color="gray", lw=1,
                label="Pareto front (means)")
        ax.legend(fontsize=7)
    ax.set(xlabel="median step time (ms, timing phase)", ylabel=f"{score_name} (mean ± 95 % CI)", title=title or "")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def write_compare_outputs(outcome, output_dir, *, stem="compare"):
    os.makedirs(output_dir, exist_ok=True)
    write_text(os.path.join(output_dir, f"{stem}.md"), outcome.markdown() + "\n")
    write_json(os.path.join(output_dir, f"{stem}.json"), outcome.to_json() if outcome.variants else
               {"task": outcome.task, "data_source": outcome.data_source, "rows": outcome.rows, **outcome.meta})
    plot_compare(outcome.rows, os.path.join(output_dir, f"{stem}.png"), title=outcome.task,
                 score_name=outcome.meta.get("score_name", "score"),
                 higher_is_better=outcome.meta.get("higher_is_better", True))
