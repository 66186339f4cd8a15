"""`compare`: all-layer LoRA vs Act-LoRA vs baselines on one task, over seeds, with paired statistics.

The protocol (one task):

1. **Profiles**, per seed s: the calibration sample of seed s (``calibration_samples`` training examples) is
   profiled once per score the matrix needs (activation ``metric``, block output, gradient with a warmed-up
   head, update score); the seconds each took count in the variant's device-hours.
2. **Selections**, per seed: Act-LoRA at each fraction, each baseline at ``baseline_fraction``; ``random``
   draws fresh blocks from its own seed stream (``RANDOM_STREAM``), never from the training seed, at least
   `random_draws` draws in all; ``cost_aware`` is the set of blocks with the largest total activation score
   whose *predicted* step time (a `CostModel` calibrated on this model and batch shape) fits the step time
   activation@baseline_fraction is predicted to take. With every score-ranked selection the margin between
   the last chosen and the first unchosen block is kept (`selection_margin`): near 0, it is a tie-break.
3. **Timing** (`measure.timing`): every distinct selection's step time and memory on a fresh model copy,
   interleaved over rounds on one real batch, medians, ``clock="process"`` by default. Training runs are
   not timed for the table: on a shared machine they are not comparable.
4. **Training**, per seed, every variant: a full `train` run from the same pretrained weights, data, seed
   and hyper-parameters; only the blocks differ. The score is the dev score of the **last** epoch, never
   the best epoch on the dev set being reported.
5. **Statistics** (`measure.stats`): per variant mean, std and t-based 95 % CI over seeds; the paired
   difference to all-layer LoRA per seed (mean, CI, paired t-test p-value; Wilcoxon from 6 pairs on);
   the task's chance score and whether all-layer LoRA is significantly above it (one-sided t-test, p < 0.05).

``compare.json`` is rewritten after every training run, so a long matrix leaves usable partial results.
"""
import dataclasses
import itertools
import math
import os
import statistics
import time
from typing import Optional

from .. import _dist
from .._checks import check_bool, check_choice, check_fraction, check_int
from .._io import new_figure, save_figure, write_json, write_text
from ..data.glue import TokenizedDataset, get_task, load_glue
from ..measure.stats import chance_score, one_sample_p, paired, summary
from ..measure.timing import TimingSettings, bench_settings, time_selections, timing_batch
from ..method.batches import without_labels
from ..method.profiling import (GRADIENT_METRIC, HEAD_WARMUP_LR, METRICS, UPDATE_METRIC, profile_activations,
                                profile_gradients, profile_updates)
from ..method.selection import select_layers, selection_margin
from ..model.anatomy import find_blocks
from ..model.hf import head_modules, load_classifier
from ..model.inject import count_lora_parameters
from . import distributed as dist_utils
from .config import TrainConfig
from .loop import calibration_batches, set_seed, train
from .outputs import check_output_dir, claim_output_dir

DEFAULT_FRACTIONS = (0.25, 0.5, 0.75)
BASELINES = ("gradient", "random", "bottom", "first", "last", "block_output", "update", "cost_aware")
DEFAULT_BASELINES = ("gradient", "random", "bottom", "first", "last", "block_output", "cost_aware")
ACTIVATION_METRICS = METRICS + (UPDATE_METRIC,)
GRADIENT_WARMUP_STEPS = 16
RANDOM_STREAM = 1_000_003   # random@ draws use seeds RANDOM_STREAM + d, d = 0, 1, ...: not the training seeds
DEFAULT_RANDOM_DRAWS = 5
ALPHA = 0.05
SCORED = ("activation", "gradient", "block_output", "update", "cost_aware")   # ranked by a score: a margin
COMPARE_OUTPUTS = ("compare.md", "compare.json", "compare.png")
SUMMARY_OUTPUTS = ("summary.md", "summary.json", "summary.png")


@dataclasses.dataclass(frozen=True)
class VariantSpec:
    """One row of the matrix: ``kind`` is "all", "activation" or a baseline; ``fraction`` of the blocks."""
    kind: str
    fraction: Optional[float] = None

    @property
    def name(self):
        return "all" if self.kind == "all" else f"{self.kind}@{self.fraction:.0%}"


def _check_list(name, value):
    if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__iter__"):
        raise TypeError(f"{name} must be a list, got {value!r}")
    return list(value)


def variant_specs(fractions=DEFAULT_FRACTIONS, baselines=DEFAULT_BASELINES, baseline_fraction=0.5):
    """The run matrix: all-layer LoRA, Act-LoRA at each fraction, each baseline at `baseline_fraction`."""
    fractions, baselines = _check_list("fractions", fractions), _check_list("baselines", baselines)
    for fraction in (*fractions, baseline_fraction):
        check_fraction("fractions", fraction)
    for name in baselines:
        check_choice("baseline", name, BASELINES)
    if not fractions and not baselines:
        raise ValueError("nothing to compare: no Act-LoRA fractions and no baselines were given, so only "
                         "all-layer LoRA would run; give fractions (--fractions 0.5) or baselines "
                         "(--baselines random)")
    specs = [VariantSpec("all")] + [VariantSpec("activation", float(f)) for f in fractions]
    specs += [VariantSpec(b, float(baseline_fraction)) for b in baselines]
    return list(dict.fromkeys(specs))


def best_within_budget(scores, cost_model, budget_ms):
    """The blocks with the largest total score whose predicted step time fits `budget_ms` (sorted).

    Exhaustive over all non-empty subsets up to 16 blocks (ties: the cheaper set, then the lower indices);
    beyond that the greedy `CostModel.select_within_budget`. Greedy-by-score with the budget of the top-k
    set returns that very set (every block it adds next costs more), so it cannot trade a low block for
    several higher ones; the exhaustive search can: moving up the stack shortens the backward.
    """
    scores = [float(s) for s in scores]
    n = len(scores)
    if n > 16:
        return cost_model.select_within_budget(scores, budget_ms=budget_ms)
    best, best_key = None, None
    limit = budget_ms * (1 + 1e-9)
    for size in range(1, n + 1):
        for subset in itertools.combinations(range(n), size):
            cost = cost_model.predict(list(subset))["step_ms"]
            if cost > limit:
                continue
            key = (sum(scores[i] for i in subset), -cost, [-i for i in subset])
            if best_key is None or key > best_key:
                best, best_key = list(subset), key
    if best is None:
        raise ValueError(f"no block fits the step-time budget of {budget_ms:.4g} ms")
    return best


# ---------------------------------------------------------------------------------------------- results
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
        if self.seeds:
            notes.append(f"seeds {self.seeds}; score = dev score of the last epoch, mean ± 95 % CI (t)")
        if self.chance_score is not None:
            verdict = {True: "above chance", False: "NOT significantly above chance: left out of averages",
                       None: "one seed: significance unknown"}[self.above_chance]
            notes.append(f"chance {self.chance_score:.2f}; all-layer LoRA {verdict}")
        table = format_table(self.rows, title=title)
        return table + ("\n\n" + "; ".join(notes) if notes else "")

    def to_json(self):
        return {"task": self.task, "seeds": self.seeds, "chance_score": self.chance_score,
                "above_chance": self.above_chance, "variants": self.variants, "data_source": self.data_source,
                **self.meta}


def _layers_field(layer_lists):
    unique = {tuple(layers) for layers in layer_lists}
    return list(layer_lists[0]) if len(unique) == 1 else [list(layers) for layers in layer_lists]


def _median(values):
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
                 "step_ms": _median([timings[k]["step_ms"] for k in keys if k in timings]),
                 "peak_memory_mib": _median([timings[k]["peak_memory_bytes"] / 2**20 for k in keys if k in timings]),
                 "lora_parameters": int(_median([lora_counts[k] for k in keys])),
                 "score_margin": [entry["margin"] for entry in chosen] if spec.kind in SCORED else None,
                 "profile_seconds": _median([profile_seconds.get((entry["seed"], entry["profile"]), 0.0)
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
                     "score_margin": v["score_margin"]})
    return rows


# ---------------------------------------------------------------------------------------------- the run
def seed_list(seeds, base):
    """`seeds` (None: the base config's seed; a count N: 0..N-1; or a list of distinct seeds) as a list."""
    if seeds is None:
        return [base.seed]
    if isinstance(seeds, bool):
        raise TypeError(f"seeds must be a count or a list of ints, got {seeds!r}")
    if isinstance(seeds, int):
        check_int("seeds", seeds, 1)
        return list(range(seeds))
    seeds = _check_list("seeds", seeds)
    if not seeds:
        raise ValueError("seeds is empty")
    for seed in seeds:
        check_int("seeds[]", seed, 0)
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {seeds}")
    return [int(s) for s in seeds]


def run_compare(base, *, fractions=DEFAULT_FRACTIONS, baselines=DEFAULT_BASELINES, baseline_fraction=0.5,
                seeds=None, random_draws=DEFAULT_RANDOM_DRAWS, metric="input_norm",
                gradient_warmup_steps=GRADIENT_WARMUP_STEPS, gradient_warmup_lr=HEAD_WARMUP_LR, timing=None,
                data=None, output_dir=None, profiles=None, on_run=None, progress=False, resume=False):
    """Train every variant of the matrix on ``base.task`` for every seed; returns a `CompareResult`.

    `seeds`: a count N (seeds 0..N-1), a list, or None (``base.seed`` only). `metric`: the activation score
    Act-LoRA ranks by (``input_norm``, ``input_rms``, ``block_output`` or ``update``). `timing`: a
    `TimingSettings` (default: 3 interleaved rounds, process clock), or False to report the training runs'
    own step times instead (not comparable on a shared machine). `profiles` (``{"activation"|"gradient":
    LayerScores}``) are reused for every seed instead of profiling. `on_run(config, report)` is called after
    each training run (``report["variant"]`` names its variant, e.g. ``"activation@50%"``). With `output_dir`: ``compare.json`` (rewritten after every run), ``compare.md``,
    ``compare.png`` (score ± CI against step time) and each run's folder. `resume`: keep the finished runs of
    an earlier ``compare.json`` in `output_dir` (same model, metric and training options; a run is kept when
    its variant, seed, draw and blocks match) and train only the rest, e.g. to add seeds. Profiles and
    timing are recomputed.
    """
    if not isinstance(base, TrainConfig):
        raise TypeError(f"base must be a TrainConfig, got {type(base).__name__}")
    specs = variant_specs(fractions, baselines, baseline_fraction)
    if profiles is not None and not isinstance(profiles, dict):
        raise TypeError(f"profiles must be a dict {{'activation'|'gradient': LayerScores}}, got "
                        f"{type(profiles).__name__}")
    if on_run is not None and not callable(on_run):
        raise TypeError(f"on_run must be a callable on_run(config, report), got {type(on_run).__name__}")
    seeds = seed_list(seeds, base)
    check_int("random_draws", random_draws, 1)
    check_choice("metric", metric, ACTIVATION_METRICS)
    check_int("gradient_warmup_steps", gradient_warmup_steps, 0)
    check_bool("progress", progress)
    if timing is None or timing is True:
        timing = TimingSettings()
    elif timing is not False and not isinstance(timing, TimingSettings):
        raise TypeError(f"timing must be a TimingSettings or False, got {type(timing).__name__}")
    if output_dir and _dist.is_main_process():
        if resume:
            check_output_dir(output_dir)
        else:
            claim_compare_dir(output_dir, specs, seeds=seeds, random_draws=random_draws, overwrite=base.overwrite)
    if data is None:
        data = load_glue(get_task(base.task), base.data_dir, max_train_samples=base.max_train_samples,
                         max_eval_samples=base.max_eval_samples, seed=base.seed)
    task = data.task
    started = time.perf_counter()

    # ---- one model for profiling, cost calibration and timing
    set_seed(base.seed)
    model, tokenizer = load_classifier(base.model, num_labels=task.num_labels)
    ctx = dist_utils.init_distributed(base.device)
    model.to(ctx.device)
    train_set = TokenizedDataset(data.train, tokenizer, base.max_seq_len, regression=task.is_regression)
    n_blocks = len(find_blocks(model))
    block_path = find_blocks(model).path

    # ---- 1. profiles per seed
    kinds = {s.kind for s in specs}
    needed = set()
    if kinds & {"activation", "bottom", "cost_aware"}:
        needed.add(metric)
    if "block_output" in kinds:
        needed.add("block_output")
    if "gradient" in kinds:
        needed.add(GRADIENT_METRIC)
    if "update" in kinds:
        needed.add(UPDATE_METRIC)
    given = dict(profiles or {})
    scores, profile_seconds = {}, {}
    for seed in seeds:
        calibration = None
        for kind in sorted(needed):
            reuse = given.get("gradient" if kind == GRADIENT_METRIC else "activation")
            if reuse is not None and (kind == GRADIENT_METRIC or kind == metric):
                scores[(seed, kind)], profile_seconds[(seed, kind)] = reuse, 0.0
                continue
            if calibration is None:
                calibration = calibration_batches(train_set, dataclasses.replace(base, seed=seed), ctx)
            tick = time.perf_counter()
            common = dict(target_modules=base.target_modules, progress=False)
            if kind == GRADIENT_METRIC:
                result = profile_gradients(model, calibration, seed=seed, head_warmup_steps=gradient_warmup_steps,
                                           head_warmup_lr=gradient_warmup_lr, **common)
            elif kind == UPDATE_METRIC:
                result = profile_updates(model, calibration, seed=seed, head_warmup_steps=gradient_warmup_steps,
                                         head_warmup_lr=gradient_warmup_lr, **common)
            else:
                result = profile_activations(model, without_labels(calibration), metric=kind, **common)
            scores[(seed, kind)], profile_seconds[(seed, kind)] = result, time.perf_counter() - tick

    # ---- cost model and timing batch
    heads = head_modules(model, "auto" if base.modules_to_save is None else base.modules_to_save)
    settings = bench_settings(timing or TimingSettings(), r=base.r, alpha=base.alpha,
                              target_modules=base.target_modules, modules_to_save=heads, lr=base.learning_rate,
                              backend=base.backend)
    batch = timing_batch(train_set, base.batch_size, seed=base.seed)
    batch = {k: v.to(ctx.device) for k, v in batch.items()}
    cost_model, cost_seconds = None, 0.0
    if "cost_aware" in kinds:
        from ..measure.cost import calibrate_cost_model

        tick = time.perf_counter()
        cost_model = calibrate_cost_model(model, batch=batch, settings=settings,
                                          rounds=timing.rounds if timing else 2, progress=progress)
        cost_seconds = time.perf_counter() - tick

    # ---- 2. selections per seed (random: its own draws)
    draws_per_seed = math.ceil(random_draws / len(seeds))
    selections = {}
    for spec in specs:
        entries = []
        for seed_index, seed in enumerate(seeds):
            profile = {"activation": metric, "bottom": metric, "cost_aware": metric, "gradient": GRADIENT_METRIC,
                       "block_output": "block_output", "update": UPDATE_METRIC}.get(spec.kind)
            ranked = scores[(seed, profile)].scores if profile else None
            if spec.kind == "all":
                layers_list = [list(range(n_blocks))]
            elif spec.kind == "random":
                layers_list = [select_layers([0.0] * n_blocks, fraction=spec.fraction, strategy="random",
                                             seed=RANDOM_STREAM + seed_index * draws_per_seed + j)
                               for j in range(draws_per_seed)]
            elif spec.kind in ("first", "last", "bottom"):
                layers_list = [select_layers(ranked if ranked else [0.0] * n_blocks, fraction=spec.fraction,
                                             strategy=spec.kind)]
            elif spec.kind == "cost_aware":
                reference = select_layers(ranked, fraction=spec.fraction)
                budget = cost_model.predict(reference)["step_ms"]
                layers_list = [best_within_budget(ranked, cost_model, budget)]
            else:
                layers_list = [select_layers(ranked, fraction=spec.fraction)]
            for j, layers in enumerate(layers_list):
                entries.append({"seed": seed, "draw": seed_index * draws_per_seed + j if spec.kind == "random"
                                else None, "layers": [int(i) for i in layers], "profile": profile,
                                "margin": selection_margin(ranked, layers) if ranked and spec.kind in SCORED
                                else None})
        selections[spec.name] = entries
    keys = list(dict.fromkeys(tuple(e["layers"]) for entries in selections.values() for e in entries))
    lora_counts = {k: count_lora_parameters(model, list(k), base.target_modules, base.r, block_path) for k in keys}

    # ---- 3. timing phase
    timings = {}
    if timing:
        tick = time.perf_counter()
        timings = time_selections(model, [list(k) for k in keys], batch, settings, rounds=timing.rounds,
                                  progress=progress)
        timing_seconds = time.perf_counter() - tick
    else:
        timing_seconds = 0.0
    del model

    meta = {"model": base.model, "metric": metric, "baseline_fraction": baseline_fraction,
            "epoch_choice": "last epoch's dev score (no selection on the reported dev set)",
            "random_stream": RANDOM_STREAM, "random_draws": draws_per_seed * len(seeds),
            "gradient_warmup_steps": gradient_warmup_steps, "gradient_warmup_lr": gradient_warmup_lr,
            "timing": ({**dataclasses.asdict(timing), "batch_shape": list(batch["input_ids"].shape),
                        "seconds": timing_seconds, "source": "interleaved timing phase"}
                       if timing else {"source": "training runs (not interleaved)"}),
            "cost_model": cost_model.to_dict() if cost_model is not None else None,
            "cost_model_seconds": cost_seconds,
            "profiles": {f"{kind}@seed{seed}": [float(v) for v in result.scores]
                         for (seed, kind), result in scores.items()},
            "train": {k: getattr(base, k) for k in ("epochs", "batch_size", "learning_rate", "r", "alpha",
                                                   "max_seq_len", "max_train_samples", "calibration_samples")},
            "train_examples": len(data.train), "status": "running", "completed_runs": 0,
            "planned_runs": sum(len(v) for v in selections.values())}
    labels = {name: [e.label for e in rows] for name, rows in data.eval.items()}
    chance = statistics.fmean(chance_score(task, split_labels) for split_labels in labels.values())

    # ---- 4. training, seed-major so every finished seed is a complete paired set
    runs = {}

    def outcome():
        variants = aggregate(specs, selections, runs, timings, lora_counts, profile_seconds, seeds)
        if not timing:
            for v in variants:
                steps = [r["step_ms_training"] for r in v["runs"]]
                v["step_ms"] = _median(steps)
            reference = variants[0]["step_ms"]
            for v in variants:
                v["delta_time_pct"] = (100.0 * (v["step_ms"] / reference - 1.0)
                                       if reference and v["step_ms"] is not None else None)
        all_scores = variants[0]["scores"]
        above, p_value = None, None
        if len(all_scores) >= 2:
            p_value = one_sample_p(all_scores, chance, "greater")
            above = bool(p_value < ALPHA and statistics.fmean(all_scores) > chance)
        meta_now = {**meta, "above_chance_p": p_value, "seconds": time.perf_counter() - started}
        return CompareResult(task=task.name, rows=rows_of(variants, task.name), data_source=data.source,
                             output_dir=output_dir, variants=variants, seeds=seeds, chance_score=chance,
                             above_chance=above, meta=meta_now)

    previous = _previous_runs(output_dir, meta) if resume and output_dir else {}
    main = _dist.is_main_process()
    trained = {}   # (seed, layers) -> run: identical runs (e.g. gradient@ picking last@'s blocks) train once
    for seed in seeds:
        for spec in specs:
            for entry in [e for e in selections[spec.name] if e["seed"] == seed]:
                common = dict(seed=seed, k=None, fraction=None, cumulative=None, resume_from=None)
                if spec.kind == "all":
                    config = dataclasses.replace(base, selection="all", layers=None, **common)
                else:
                    config = dataclasses.replace(base, selection="fixed", layers=entry["layers"], **common)
                if output_dir:
                    folder = _slug(spec.name) + (f"-draw{entry['draw']}" if entry["draw"] is not None else "")
                    parts = [folder] if len(seeds) == 1 and entry["draw"] is None else [folder, f"seed{seed}"]
                    config = dataclasses.replace(config, output_dir=os.path.join(output_dir, *parts))
                key = (seed, tuple(entry["layers"]))
                earlier = previous.get((spec.name, seed, entry["draw"], key[1]))
                if earlier is not None:
                    runs.setdefault(spec.name, []).append(earlier)
                    trained.setdefault(key, {**earlier, "variant": spec.name})
                    meta["completed_runs"] += 1
                    continue
                if key in trained:  # same seed, same blocks, same everything: the same run (training is seeded)
                    runs.setdefault(spec.name, []).append({**{k: v for k, v in trained[key].items() if k != "variant"},
                                                           "draw": entry["draw"],
                                                           "same_run_as": trained[key]["variant"]})
                    meta["completed_runs"] += 1
                    continue
                report = train(config, data=data).report
                record = {
                    "seed": seed, "draw": entry["draw"], "layers": entry["layers"],
                    "score": report["history"][-1]["score"], "best_epoch_score": report["score"],
                    "metrics": report["history"][-1]["metrics"], "epochs": len(report["history"]),
                    "wall_seconds": report["wall_seconds"], "train_seconds": report["train_seconds"],
                    "step_ms_training": report["step_time_ms"]["step"]}
                runs.setdefault(spec.name, []).append(record)
                trained[key] = {**record, "variant": spec.name}
                meta["completed_runs"] += 1
                if on_run is not None:
                    on_run(config, {**report, "variant": spec.name})
                if output_dir and main:
                    write_json(os.path.join(output_dir, "compare.json"), outcome().to_json())
    meta["status"] = "complete"
    result = outcome()
    if output_dir and main:
        write_compare_outputs(result, output_dir)
    return result


def load_compare(path):
    """A `CompareResult` back from a ``compare.json`` that `run_compare` wrote (partial results included)."""
    import json

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


def claim_compare_dir(output_dir, specs, *, seeds, random_draws, overwrite=False):
    """The output-folder rule (see `outputs`) for a compare: it owns ``compare.*`` and one folder per variant
    (per random draw). Refuses (FileExistsError) a folder holding an earlier compare's files unless
    `overwrite`, which deletes them (and only them) first."""
    check_int("random_draws", random_draws, 1)  # before the folder exists: a bad argument leaves nothing
    draws = math.ceil(random_draws / len(seeds)) * len(seeds)  # as run_compare spreads them over the seeds
    folders = []
    for spec in specs:
        name = _slug(spec.name)
        folders += [f"{name}-draw{d}" for d in range(draws)] if spec.kind == "random" else [name]
    check_output_dir(output_dir)
    for name in folders:  # empty leftovers are no earlier results
        path = os.path.join(output_dir, name)
        if os.path.isdir(path) and not os.listdir(path):
            os.rmdir(path)
    return claim_output_dir(output_dir, overwrite=overwrite, owned=COMPARE_OUTPUTS + tuple(folders))


def _previous_runs(output_dir, meta):
    """``{(variant, seed, draw, layers): run}`` from `output_dir`'s compare.json, if its settings match."""
    import json

    path = os.path.join(output_dir, "compare.json")
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as handle:
        old = json.load(handle)
    for key in ("model", "metric", "train", "baseline_fraction", "gradient_warmup_steps"):
        if old.get(key) != meta.get(key):
            raise ValueError(f"cannot resume from {path}: its {key} is {old.get(key)!r}, this run's is "
                             f"{meta.get(key)!r}")
    found = {}
    for variant in old.get("variants", []):
        for run in variant.get("runs", []):
            found[(variant["name"], run["seed"], run.get("draw"), tuple(run["layers"]))] = run
    return found


def _slug(name):
    return name.replace("@", "-").replace("%", "pct").replace("=", "")


def write_compare_outputs(outcome, output_dir, *, stem="compare"):
    os.makedirs(output_dir, exist_ok=True)
    write_text(os.path.join(output_dir, f"{stem}.md"), outcome.markdown() + "\n")
    write_json(os.path.join(output_dir, f"{stem}.json"), outcome.to_json() if outcome.variants else
               {"task": outcome.task, "data_source": outcome.data_source, "rows": outcome.rows, **outcome.meta})
    plot_compare(outcome.rows, os.path.join(output_dir, f"{stem}.png"), title=outcome.task)


# ---------------------------------------------------------------------------------------------- tables
def _fmt(value, spec=".2f", missing="–"):
    return missing if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _ci(ci, spec=".2f"):
    return f"[{_fmt(ci[0], spec)}, {_fmt(ci[1], spec)}]" if ci else "–"


def format_table(rows, title=None):
    """The Markdown table: score (mean ± CI half-width), Δ vs all (mean, CI, p), step time, memory, parameters,
    device-hours (a run's wall time plus its profiling, mean over seeds) and the smallest selection margin."""
    lines = [f"### {title}", ""] if title else []
    lines += ["| variant | layers | score | Δ score | Δ 95 % CI | p | step ms | Δ time % | peak mem MiB | "
              "LoRA params | device-h | margin |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        layers = row["layers"]
        if layers is None:
            shown = "per task"
        elif layers and isinstance(layers[0], list):
            shown = "; ".join(",".join(map(str, l)) for l in layers[:3]) + (" …" if len(layers) > 3 else "")
        else:
            shown = ",".join(map(str, layers))
        score = _fmt(row["score"])
        if row.get("ci95") and row.get("n", 1) > 1:
            score += f" ± {_fmt((row['ci95'][1] - row['ci95'][0]) / 2)}"
        margin = row.get("score_margin")
        margins = [m for m in (margin or []) if m is not None]
        lines.append(
            f"| {row['variant']} | {shown} | {score} | {_fmt(row['delta_score'], '+.2f')} | "
            f"{_ci(row.get('delta_ci95') if row.get('n', 1) > 1 else None, '+.2f')} | "
            f"{_fmt(row.get('p_value'), '.3f')} | "
            f"{_fmt(row['step_ms'], '.1f')} | {_fmt(row['delta_time_pct'], '+.1f')} | "
            f"{_fmt(row['peak_memory_bytes'] / 2**20 if row['peak_memory_bytes'] is not None else None, '.1f')} | "
            f"{row['lora_parameters']:,} | {_fmt(row.get('device_hours'), '.4f')} | "
            f"{_fmt(min(margins) if margins else None, '+.3f')} |")
    lines += ["", "Δ: paired against all-layer LoRA (same seeds). margin: (lowest chosen − highest unchosen block "
              "score) / mean score, the smallest over seeds; near 0 a tie-break picked the blocks."]
    return "\n".join(lines)


def summarize(results):
    """The average over tasks per variant, as a `CompareResult`: only tasks where all-layer LoRA is
    significantly above chance count (the others are listed in ``meta["excluded_tasks"]``); per seed the
    task scores are averaged first, so the paired statistics stay paired by seed. Step time: the mean over
    tasks; Δ time %: the mean of the per-task changes."""
    if not results:
        raise ValueError("no compare results to summarize")
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


def plot_compare(rows, path, title=None):
    """Score (mean ± 95 % CI over seeds) against median step time, one point per variant; the Pareto front
    (no other variant both faster and better on the mean) is drawn as a line."""
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
    front = [row for row in points if not any(
        o is not row and o["step_ms"] <= row["step_ms"] and o["score"] >= row["score"]
        and (o["step_ms"] < row["step_ms"] or o["score"] > row["score"]) for o in points)]
    front.sort(key=lambda row: row["step_ms"])
    if len(front) > 1:
        ax.plot([r["step_ms"] for r in front], [r["score"] for r in front], "--", color="gray", lw=1,
                label="Pareto front (means)")
        ax.legend(fontsize=7)
    ax.set(xlabel="median step time (ms, timing phase)", ylabel="score (mean ± 95 % CI)", title=title or "")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)
