"""A comparison's results: per-variant statistics over seeds (`aggregate`), the table rows, the average over
tasks (`summarize`), and `CompareResult`, which ``compare.json`` holds."""
import dataclasses
import json
import os
import statistics
from typing import Optional

from ...measure.stats import paired, summary
from .matrix import SCORED
from .tables import format_table


@dataclasses.dataclass
class CompareResult:
    task: str
    rows: list                      # one per variant: the table's row (means over seeds)
    data_source: str
    output_dir: Optional[str]
    variants: list = dataclasses.field(default_factory=list)   # compare.json's variants
    seeds: list = dataclasses.field(default_factory=list)
    chance_score: Optional[float] = None
    above_chance: Optional[bool] = None
    meta: dict = dataclasses.field(default_factory=dict)

    def markdown(self):
        title = f"{self.task} ({self.data_source})"
        notes = []
        higher = self.meta.get("higher_is_better", True)
        if self.seeds:
            scored = "dev score" if higher else f"{self.meta.get('score_name', 'score')} (lower is better)"
            notes.append(f"seeds {self.seeds}; score = {scored} of the last epoch, mean ± 95 % CI (t)")
        if self.chance_score is not None:
            verdict = {True: "above chance", False: "NOT significantly above chance: left out of averages",
                       None: "one seed: significance unknown"}[self.above_chance]
            notes.append(f"chance {self.chance_score:.2f}; all-layer LoRA {verdict}")
        table = format_table(self.rows, title=title, score_name=self.meta.get("score_name", "score"),
                             higher_is_better=higher)
        return table + ("\n\n" + "; ".join(notes) if notes else "")

    def to_json(self):
        return {"task": self.task, "seeds": self.seeds, "chance_score": self.chance_score,
                "above_chance": self.above_chance, "variants": self.variants, "data_source": self.data_source,
                **self.meta}


def _layers_field(layer_lists):
    unique = {tuple(layers) for layers in layer_lists}
    return list(layer_lists[0]) if len(unique) == 1 else [list(layers) for layers in layer_lists]


def median_or_none(values):
    values = [v for v in values if v is not None]
    return float(statistics.median(values)) if values else None


def aggregate(specs, selections, runs, timings, lora_counts, profile_seconds, seeds):
    """compare.json's ``variants`` from the selections, finished runs and timings (see the module docstring)."""
    all_by_seed = {run["seed"]: run["score"] for run in runs.get("all", [])}
    variants = []
    for spec in specs:
        chosen = selections[spec.name]
        done = runs.get(spec.name, [])
        by_seed = {}
        for run in done:
            by_seed.setdefault(run["seed"], []).append(run["score"])
        seed_scores = [statistics.fmean(by_seed[s]) for s in seeds if s in by_seed]
        layer_lists = [entry["layers"] for entry in chosen]
        keys = [tuple(layers) for layers in layer_lists]
        entry = {"name": spec.name, "kind": spec.kind, "fraction": spec.fraction,
                 "layers": _layers_field(layer_lists),
                 "scores": seed_scores, "seeds": [s for s in seeds if s in by_seed],
                 "step_ms": median_or_none([timings[k]["step_ms"] for k in keys if k in timings]),
                 "peak_memory_mib": median_or_none([timings[k]["peak_memory_bytes"] / 2**20 for k in keys if k in timings]),
                 "lora_parameters": int(median_or_none([lora_counts[k] for k in keys])),
                 "score_margin": [entry["margin"] for entry in chosen] if spec.kind in SCORED else None,
                 "profile_seconds": median_or_none([profile_seconds.get((entry["seed"], entry["profile"]), 0.0)
                                             for entry in chosen]) if chosen[0]["profile"] else 0.0,
                 "runs": done}
        if spec.kind == "random":
            entry["draws"] = [{"seed": e["seed"], "draw": e["draw"], "layers": e["layers"]} for e in chosen]
        if seed_scores:
            entry.update({k: v for k, v in summary(seed_scores).items() if k != "n"})
        else:
            entry.update(mean=None, std=None, ci95=None)
        walls = [run["wall_seconds"] for run in done]
        entry["device_hours"] = ((statistics.fmean(walls) + entry["profile_seconds"]) / 3600.0) if walls else None
        if spec.kind != "all":
            common = [s for s in seeds if s in by_seed and s in all_by_seed]
            if common:
                d = paired([statistics.fmean(by_seed[s]) for s in common], [all_by_seed[s] for s in common])
                entry["delta_vs_all"] = {"mean": d["mean"], "ci95": d["ci95"], "p_value": d["p_value"],
                                         "wilcoxon_p": d["wilcoxon_p"], "n": d["n"]}
            else:
                entry["delta_vs_all"] = {"mean": None, "ci95": None, "p_value": None, "wilcoxon_p": None, "n": 0}
        variants.append(entry)
    reference = variants[0]["step_ms"] if variants and variants[0]["kind"] == "all" else None
    for entry in variants:
        entry["delta_time_pct"] = (100.0 * (entry["step_ms"] / reference - 1.0)
                                   if reference and entry["step_ms"] is not None else None)
    return variants


def rows_of(variants, task):
    """The table rows (one per variant) from compare.json's variants."""
    rows = []
    for v in variants:
        delta = v.get("delta_vs_all") or {}
        rows.append({"task": task, "variant": v["name"], "selection": v["kind"], "layers": v["layers"],
                     "score": v["mean"], "ci95": v["ci95"], "std": v["std"], "n": len(v["scores"]),
                     "delta_score": delta.get("mean", 0.0) if v["kind"] != "all" else 0.0,
                     "delta_ci95": delta.get("ci95"), "p_value": delta.get("p_value"),
                     "step_ms": v["step_ms"], "delta_time_pct": v["delta_time_pct"],
                     "peak_memory_bytes": v["peak_memory_mib"] * 2**20 if v["peak_memory_mib"] is not None else None,
                     "lora_parameters": v["lora_parameters"], "device_hours": v["device_hours"],
                     "score_margin": v["score_margin"], "perplexity": _mean_metric(v["runs"], "perplexity")})
    return rows


def _mean_metric(runs, name):
    values = [run["metrics"][name] for run in runs if name in run.get("metrics", {})]
    return statistics.fmean(values) if values else None


def load_compare(path):
    """A `CompareResult` back from a ``compare.json`` that `run_compare` wrote (partial results included)."""
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    if not isinstance(data, dict) or "variants" not in data or "task" not in data:
        raise ValueError(f"{path}: not a compare.json (needs 'task' and 'variants')")
    meta = {k: v for k, v in data.items()
            if k not in ("task", "seeds", "chance_score", "above_chance", "variants", "data_source")}
    return CompareResult(task=data["task"], rows=rows_of(data["variants"], data["task"]),
                         data_source=data.get("data_source", ""), output_dir=os.path.dirname(path),
                         variants=data["variants"], seeds=data.get("seeds", []),
                         chance_score=data.get("chance_score"), above_chance=data.get("above_chance"), meta=meta)


def summarize(results):
    """The average over tasks per variant, as a `CompareResult`: only tasks where all-layer LoRA is
    significantly above chance count (the others are listed in ``meta["excluded_tasks"]``); per seed the
    task scores are averaged first, so the paired statistics stay paired by seed. Step time: the mean over
    tasks; Δ time %: the mean of the per-task changes."""
    if not results:
        raise ValueError("no compare results to summarize")
    losses = [r.task for r in results if r.meta.get("higher_is_better") is False]
    if losses:
        raise ValueError(f"{', '.join(losses)}: a loss (lower is better) is not averaged with other tasks' scores; "
                         "compare text tasks one at a time")
    included = [r for r in results if r.above_chance is not False]
    excluded = [r.task for r in results if r.above_chance is False]
    if not included:
        raise ValueError(f"every task ({', '.join(excluded)}) is at chance: nothing to average")
    names = [v["name"] for v in included[0].variants] if included[0].variants else \
        [row["variant"] for row in included[0].rows]
    rows = []
    for name in names:
        per_task = []
        for result in included:
            match = ([v for v in result.variants if v["name"] == name] if result.variants else
                     [{"name": name, "scores": [row["score"]], "seeds": [0], "kind": row["selection"],
                       "step_ms": row["step_ms"], "peak_memory_mib": row["peak_memory_bytes"] / 2**20,
                       "lora_parameters": row["lora_parameters"], "device_hours": row.get("device_hours")}
                      for row in result.rows if row["variant"] == name])
            if match:
                per_task.append(match[0])
        if len(per_task) != len(included):
            continue  # a variant missing from some task can't be averaged fairly
        seeds = sorted(set.intersection(*[set(v["seeds"]) for v in per_task]))
        if not seeds:
            continue
        per_seed = [statistics.fmean(v["scores"][v["seeds"].index(s)] for v in per_task) for s in seeds]
        rows.append({"variant": name, "selection": per_task[0]["kind"], "layers": None, "per_seed": per_seed,
                     "seeds": seeds, "step_ms": statistics.fmean(v["step_ms"] for v in per_task)
                     if all(v["step_ms"] is not None for v in per_task) else None,
                     "task_delta_time_pct": [v.get("delta_time_pct") for v in per_task],
                     "peak_memory_bytes": statistics.fmean(v["peak_memory_mib"] for v in per_task) * 2**20
                     if all(v["peak_memory_mib"] is not None for v in per_task) else None,
                     "lora_parameters": int(round(statistics.fmean(v["lora_parameters"] for v in per_task))),
                     "device_hours": sum(v.get("device_hours") or 0.0 for v in per_task),
                     "tasks": [r.task for r in included]})
    if not rows:
        raise ValueError("no variant was run on every task with a common seed")
    reference = rows[0]
    for row in rows:
        s = summary(row["per_seed"])
        row.update(score=s["mean"], ci95=s["ci95"], std=s["std"], n=s["n"])
        common = [x for x in row["seeds"] if x in reference["seeds"]]
        a = [row["per_seed"][row["seeds"].index(x)] for x in common]
        b = [reference["per_seed"][reference["seeds"].index(x)] for x in common]
        d = paired(a, b) if row is not reference else None
        row.update(delta_score=d["mean"] if d else 0.0, delta_ci95=d["ci95"] if d else None,
                   p_value=d["p_value"] if d else None)
        # the mean of the per-task changes: each task weighs the same, whatever its sequence lengths
        changes = row.pop("task_delta_time_pct")
        row["delta_time_pct"] = (statistics.fmean(changes) if row is not reference else 0.0) \
            if all(c is not None for c in changes) else None
    tasks = "+".join(r.task for r in included)
    title = f"GLUE average ({tasks})" + (f"; at chance, left out: {', '.join(excluded)}" if excluded else "")
    return CompareResult(task=title, rows=rows, data_source="per-task runs", output_dir=None,
                         meta={"excluded_tasks": excluded, "included_tasks": [r.task for r in included]})
