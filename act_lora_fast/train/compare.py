"""`compare`: all-layer LoRA vs Act-LoRA at several fractions vs the baselines, on one task, as a paper-style table.

Every variant is a full `train` run from the same pretrained weights, data, seed and hyper-parameters; only
the layer selection differs. The activation (and gradient) profile is computed once and reused, so the
profiling cost shows up once, in the first run that needs it. Δ score is in GLUE points against all-layer
LoRA; Δ time is the change of the median optimizer-step time in percent.
"""
import dataclasses
import os
from typing import Optional

import numpy as np

from .. import _dist
from .._checks import check_choice, check_fraction
from .._io import new_figure, save_figure, write_json, write_text
from ..data.glue import get_task, load_glue
from .config import TrainConfig
from .loop import train
from .outputs import check_output_dir, claim_output_dir

DEFAULT_FRACTIONS = (0.25, 0.5, 0.75)
DEFAULT_BASELINES = ("gradient", "random", "bottom", "last")
BASELINES = ("gradient", "random", "bottom", "first", "last")
COMPARE_OUTPUTS = ("compare.md", "compare.json", "compare.png")
SUMMARY_OUTPUTS = ("summary.md", "summary.json", "summary.png")


def variant_configs(base, fractions=DEFAULT_FRACTIONS, baselines=DEFAULT_BASELINES, baseline_fraction=0.5):
    """The run matrix: all-layer LoRA, Act-LoRA at each fraction, each baseline at `baseline_fraction`."""
    if not isinstance(base, TrainConfig):
        raise TypeError(f"base must be a TrainConfig, got {type(base).__name__}")
    for name, value in (("fractions", fractions), ("baselines", baselines)):
        if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__iter__"):
            raise TypeError(f"{name} must be a list, got {value!r}")
    fractions, baselines = list(fractions), list(baselines)
    for fraction in (*fractions, baseline_fraction):
        check_fraction("fractions", fraction)
    for name in baselines:
        check_choice("baseline", name, BASELINES)
    if not fractions and not baselines:
        raise ValueError("nothing to compare: no Act-LoRA fractions and no baselines were given, so only "
                         "all-layer LoRA would run; give fractions (--fractions 0.5) or baselines "
                         "(--baselines random)")
    common = dict(k=None, cumulative=None, resume_from=None)
    configs = [dataclasses.replace(base, selection="all", fraction=None, **common)]
    configs += [dataclasses.replace(base, selection="activation", fraction=float(f), **common) for f in fractions]
    configs += [dataclasses.replace(base, selection=b, fraction=float(baseline_fraction), **common)
                for b in baselines]
    return configs


def _row(report, reference):
    step_ms = report["step_time_ms"]["step"]
    return {
        "task": report["task"],
        "variant": report["selection_label"],
        "selection": report["selection"],
        "layers": report["selected_layers"],
        "num_layers": report["num_layers"],
        "score": report["score"],
        "metrics": report["metrics"],
        "delta_score": report["score"] - reference["score"] if reference else 0.0,
        "step_ms": step_ms,
        "forward_ms": report["step_time_ms"]["forward"],
        "backward_ms": report["step_time_ms"]["backward"],
        "optimizer_ms": report["step_time_ms"]["optimizer"],
        "delta_time_pct": 100.0 * (step_ms / reference["step_time_ms"]["step"] - 1.0) if reference else 0.0,
        "peak_memory_bytes": report["peak_memory_bytes"],
        "memory_source": report["memory"]["source"],
        "lora_parameters": report["lora_parameters"],
        "trainable_parameters": report["trainable_parameters"],
        "tokens_per_s": report["tokens_per_s"],
        "device_hours": report["device_hours"],
        "profile_seconds": report["profile_seconds"],
        "train_seconds": report["train_seconds"],
    }


@dataclasses.dataclass
class CompareResult:
    task: str
    rows: list
    data_source: str
    output_dir: Optional[str]

    def markdown(self):
        return format_table(self.rows, title=f"{self.task} ({self.data_source})")


def run_compare(base, *, fractions=DEFAULT_FRACTIONS, baselines=DEFAULT_BASELINES, baseline_fraction=0.5,
                data=None, output_dir=None, profiles=None, on_run=None):
    """Train every variant of the matrix on ``base.task``; returns a `CompareResult` (rows in run order).

    Writes ``compare.md``, ``compare.json`` and ``compare.png`` plus each run's folder under `output_dir`.
    `profiles` (``{"activation"|"gradient": LayerScores}``) reuses profiles computed beforehand.
    `on_run(config, report)` is called after each run (e.g. to print progress).
    """
    configs = variant_configs(base, fractions, baselines, baseline_fraction)
    if profiles is not None and not isinstance(profiles, dict):
        raise TypeError(f"profiles must be a dict {{'activation'|'gradient': LayerScores}}, got "
                        f"{type(profiles).__name__}")
    if on_run is not None and not callable(on_run):
        raise TypeError(f"on_run must be a callable on_run(config, report), got {type(on_run).__name__}")
    if output_dir and _dist.is_main_process():
        claim_compare_dir(output_dir, configs, overwrite=base.overwrite)
    if data is None:
        data = load_glue(get_task(base.task), base.data_dir, max_train_samples=base.max_train_samples,
                         max_eval_samples=base.max_eval_samples, seed=base.seed)
    profiles, rows, reference = dict(profiles or {}), [], None
    for config in configs:
        if output_dir:
            config = dataclasses.replace(config, output_dir=os.path.join(output_dir, _slug(config)))
        result = train(config, data=data, layer_scores=profiles)
        if result.scores is not None:
            profiles.setdefault("gradient" if config.selection == "gradient" else "activation", result.scores)
        reference = reference or result.report
        rows.append(_row(result.report, reference))
        if on_run is not None:
            on_run(config, result.report)
    outcome = CompareResult(task=data.task.name, rows=rows, data_source=data.source, output_dir=output_dir)
    if output_dir and _dist.is_main_process():
        write_compare_outputs(outcome, output_dir)
    return outcome


def claim_compare_dir(output_dir, configs, *, overwrite=False):
    """The output-folder rule (see `outputs`) for a compare: it owns ``compare.*`` and one folder per variant.

    Refuses (FileExistsError) a folder holding an earlier compare's files unless `overwrite`, which deletes
    them (and only them) first.
    """
    folders = [_slug(config) for config in configs]
    check_output_dir(output_dir)
    present = [name for name in folders if os.path.isdir(os.path.join(output_dir, name))
               and not os.listdir(os.path.join(output_dir, name))]  # empty leftovers are no earlier results
    for name in present:
        os.rmdir(os.path.join(output_dir, name))
    return claim_output_dir(output_dir, overwrite=overwrite, owned=COMPARE_OUTPUTS + tuple(folders))


def _slug(config):
    return config.selection_label.replace("@", "-").replace("%", "pct").replace("=", "")


def write_compare_outputs(outcome, output_dir, *, stem="compare"):
    os.makedirs(output_dir, exist_ok=True)
    write_text(os.path.join(output_dir, f"{stem}.md"), outcome.markdown() + "\n")
    write_json(os.path.join(output_dir, f"{stem}.json"),
                      {"task": outcome.task, "data_source": outcome.data_source, "rows": outcome.rows})
    plot_compare(outcome.rows, os.path.join(output_dir, f"{stem}.png"), title=outcome.task)


def format_table(rows, title=None):
    """The paper-style Markdown table: score, Δ score, step time, Δ time %, peak memory, LoRA parameters."""
    lines = [f"### {title}", ""] if title else []
    lines += ["| variant | layers | score | Δ score | step ms | Δ time % | peak mem MiB | LoRA params |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        layers = ",".join(map(str, row["layers"])) if row["layers"] is not None else "per task"
        lines.append(f"| {row['variant']} | {layers} | {row['score']:.2f} | {row['delta_score']:+.2f} | "
                     f"{row['step_ms']:.1f} | {row['delta_time_pct']:+.1f} | "
                     f"{row['peak_memory_bytes'] / 2**20:.1f} | {row['lora_parameters']:,} |")
    return "\n".join(lines)


def summarize(results):
    """Rows averaged over tasks per variant (the GLUE average of the tasks run), as a `CompareResult`."""
    if not results:
        raise ValueError("no compare results to summarize")
    by_variant = {}
    for result in results:
        for row in result.rows:
            by_variant.setdefault(row["variant"], []).append(row)
    rows = []
    for variant, group in by_variant.items():
        if len(group) != len(results):
            continue  # a variant missing from some task can't be averaged fairly
        mean = lambda key: float(np.mean([r[key] for r in group]))  # noqa: E731
        rows.append({"variant": variant, "selection": group[0]["selection"], "layers": None,
                     "num_layers": group[0]["num_layers"], "score": mean("score"),
                     "delta_score": mean("delta_score"), "step_ms": mean("step_ms"),
                     "delta_time_pct": mean("delta_time_pct"), "peak_memory_bytes": mean("peak_memory_bytes"),
                     "lora_parameters": int(round(mean("lora_parameters"))),
                     "device_hours": float(np.sum([r["device_hours"] for r in group])),
                     "tasks": [r.get("task") for r in group]})
    tasks = "+".join(r.task for r in results)
    return CompareResult(task=f"GLUE average ({tasks})", rows=rows, data_source="per-task runs", output_dir=None)


def plot_compare(rows, path, title=None):
    """Score against step time, one point per variant: the trade-off at a glance."""
    fig, (ax,) = new_figure(1, width=6.5, height=4)
    for index, row in enumerate(rows):
        marker = "s" if row["selection"] == "all" else ("o" if row["selection"] == "activation" else "^")
        ax.scatter(row["step_ms"], row["score"], marker=marker, s=50)
        # Alternate label sides so variants with equal scores (same blocks) stay readable.
        ax.annotate(row["variant"], (row["step_ms"], row["score"]), fontsize=7,
                    xytext=(5, 4) if index % 2 == 0 else (5, -10), textcoords="offset points")
    ax.set(xlabel="median step time (ms)", ylabel="score (GLUE points)", title=title or "")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)
