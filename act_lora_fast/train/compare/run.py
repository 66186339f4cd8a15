"""`run_compare`: the comparison's protocol (see the package docstring), one task, every variant, every seed."""
import dataclasses
import math
import os
import statistics
import time

from ... import _dist
from ..._checks import check_bool, check_choice, check_int
from ..._io import write_json
from ...measure.stats import one_sample_p
from ...measure.timing import TimingSettings, bench_settings, time_selections, timing_batch
from ...method.profiling import HEAD_WARMUP_LR
from ...model.anatomy import find_blocks
from ...model.inject import count_lora_parameters
from .. import distributed as dist_utils
from ..config import TrainConfig, result_options
from ..lock import locks_output_dir
from ..loop import set_seed, train
from ..outputs import claim_output_dir
from ..signals import raise_if_stopped, shielded, stop_reason
from ..tasks import task_for
from .folder import claim_compare_dir, previous_runs, run_folder_intact, slug
from .matrix import ACTIVATION_METRICS, DEFAULT_BASELINES, DEFAULT_FRACTIONS, seed_list, variant_specs
from .results import CompareResult, median_or_none, aggregate, rows_of
from .selections import RANDOM_STREAM, profile_kinds, profile_seeds, select_variants
from .tables import write_compare_outputs

GRADIENT_WARMUP_STEPS = 16
DEFAULT_RANDOM_DRAWS = 5
ALPHA = 0.05
# what compare sets per run, and its own metric options (recorded on their own): not compared as the base's
PER_RUN_FIELDS = ("seed", "selection", "k", "fraction", "cumulative", "layers", "resume_from", "metric",
                  "gradient_warmup_steps")


@locks_output_dir
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
    an earlier ``compare.json`` in `output_dir` and train only the rest, e.g. to add seeds or to finish an
    interrupted comparison: the file must record the same result-changing options (`result_options`: every
    option but the output, device and kernel settings; a difference is refused, naming the options), and a
    run is kept when its variant, seed, draw and blocks match and its folder still holds its finished report
    (and adapter). Profiles and timing are recomputed. The output folder is locked for the whole comparison
    (`output_dir_lock`); an interrupted comparison's ``compare.json`` says ``"status": "interrupted"``.
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
    # every option that changes a result: recorded, and compared with an earlier compare.json before any work
    options = {**result_options(base, leave_out=PER_RUN_FIELDS), "metric": metric,
               "baseline_fraction": baseline_fraction, "gradient_warmup_steps": gradient_warmup_steps,
               "gradient_warmup_lr": gradient_warmup_lr, "random_stream": RANDOM_STREAM}
    previous = previous_runs(output_dir, options) if resume and output_dir else {}
    if output_dir and _dist.is_main_process() and not resume:
        claim_compare_dir(output_dir, specs, seeds=seeds, random_draws=random_draws, overwrite=base.overwrite)
    task = task_for(getattr(data, "task", None) or base.task)
    if data is None:
        data = task.load_data(base)
    started = time.perf_counter()

    # ---- one model for profiling, cost calibration and timing (whole on every rank, also under --fsdp)
    set_seed(base.seed)
    model, tokenizer = task.load_model(base)
    ctx = dist_utils.init_distributed(base.device)
    model.to(ctx.device)
    train_set, _ = task.datasets(data, tokenizer, base)
    n_blocks = len(find_blocks(model))
    block_path = find_blocks(model).path

    # ---- 1. profiles per seed
    kinds = {s.kind for s in specs}
    scores, profile_seconds = profile_seeds(model, train_set, base, ctx, seeds=seeds,
                                            needed=profile_kinds(kinds, metric), metric=metric, given=profiles,
                                            gradient_warmup_steps=gradient_warmup_steps,
                                            gradient_warmup_lr=gradient_warmup_lr)

    # ---- cost model and timing batch
    heads = task.heads(model, base)
    settings = bench_settings(timing or TimingSettings(), r=base.r, alpha=base.alpha,
                              target_modules=base.target_modules, modules_to_save=heads, lr=base.learning_rate,
                              backend=base.backend)
    batch = timing_batch(train_set, base.batch_size, seed=base.seed)
    batch = {k: v.to(ctx.device) for k, v in batch.items()}
    cost_model, cost_seconds = None, 0.0
    if "cost_aware" in kinds:
        from ...measure.cost import calibrate_cost_model

        tick = time.perf_counter()
        cost_model = calibrate_cost_model(model, batch=batch, settings=settings,
                                          rounds=timing.rounds if timing else 2, progress=progress)
        cost_seconds = time.perf_counter() - tick

    # ---- 2. selections per seed (random: its own draws)
    selections = select_variants(specs, scores, seeds=seeds, n_blocks=n_blocks, metric=metric,
                                 random_draws=random_draws, cost_model=cost_model)
    draws_per_seed = math.ceil(random_draws / len(seeds))
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
            "options": options,
            "train_examples": len(data.train), "status": "running", "completed_runs": 0,
            "planned_runs": sum(len(v) for v in selections.values()),
            "score_name": task.score_name, "higher_is_better": task.higher_is_better}
    chance = task.chance_score(data)

    # ---- 4. training, seed-major so every finished seed is a complete paired set
    raise_if_stopped()  # a stop swallowed during the set-up ends the comparison here
    runs = {}

    def outcome():
        variants = aggregate(specs, selections, runs, timings, lora_counts, profile_seconds, seeds)
        if not timing:
            for v in variants:
                steps = [r["step_ms_training"] for r in v["runs"]]
                v["step_ms"] = median_or_none(steps)
            reference = variants[0]["step_ms"]
            for v in variants:
                v["delta_time_pct"] = (100.0 * (v["step_ms"] / reference - 1.0)
                                       if reference and v["step_ms"] is not None else None)
        all_scores = variants[0]["scores"]
        above, p_value = None, None
        if len(all_scores) >= 2 and chance is not None:  # a text task has no chance level
            p_value = one_sample_p(all_scores, chance, "greater")
            above = bool(p_value < ALPHA and statistics.fmean(all_scores) > chance)
        meta_now = {**meta, "above_chance_p": p_value, "seconds": time.perf_counter() - started}
        return CompareResult(task=task.name, rows=rows_of(variants, task.name), data_source=data.source,
                             output_dir=output_dir, variants=variants, seeds=seeds, chance_score=chance,
                             above_chance=above, meta=meta_now)

    main = _dist.is_main_process()
    trained = {}   # (seed, layers) -> run: identical runs (e.g. gradient@ picking last@'s blocks) train once
    try:
        for seed in seeds:
            for spec in specs:
                for entry in [e for e in selections[spec.name] if e["seed"] == seed]:
                    raise_if_stopped()
                    common = dict(seed=seed, k=None, fraction=None, cumulative=None, resume_from=None)
                    if spec.kind == "all":
                        config = dataclasses.replace(base, selection="all", layers=None, **common)
                    else:
                        config = dataclasses.replace(base, selection="fixed", layers=entry["layers"], **common)
                    if output_dir:
                        folder = slug(spec.name) + (f"-draw{entry['draw']}" if entry["draw"] is not None else "")
                        parts = [folder] if len(seeds) == 1 and entry["draw"] is None else [folder, f"seed{seed}"]
                        config = dataclasses.replace(config, output_dir=os.path.join(output_dir, *parts))
                    key = (seed, tuple(entry["layers"]))
                    earlier = previous.get((spec.name, seed, entry["draw"], key[1]))
                    if earlier is not None and run_folder_intact(output_dir, earlier):
                        runs.setdefault(spec.name, []).append(earlier)
                        trained.setdefault(key, {**earlier, "variant": spec.name})
                        meta["completed_runs"] += 1
                        continue
                    if key in trained:  # same seed, same blocks, same everything: the same run (training is seeded)
                        same = {k: v for k, v in trained[key].items() if k != "variant"}
                        runs.setdefault(spec.name, []).append({**same, "draw": entry["draw"],
                                                               "same_run_as": trained[key]["variant"]})
                        meta["completed_runs"] += 1
                        continue
                    if output_dir and main:  # the folder of an earlier, unfinished or lost run: this run's now
                        claim_output_dir(config.output_dir, overwrite=True)
                    report = train(config, data=data).report
                    record = {
                        "seed": seed, "draw": entry["draw"], "layers": entry["layers"],
                        "score": report["history"][-1]["score"], "best_epoch_score": report["score"],
                        "metrics": report["history"][-1]["metrics"], "epochs": len(report["history"]),
                        "wall_seconds": report["wall_seconds"], "train_seconds": report["train_seconds"],
                        "step_ms_training": report["step_time_ms"]["step"],
                        "output_dir": os.path.relpath(config.output_dir, output_dir) if output_dir else None}
                    runs.setdefault(spec.name, []).append(record)
                    trained[key] = {**record, "variant": spec.name}
                    meta["completed_runs"] += 1
                    if on_run is not None:
                        on_run(config, {**report, "variant": spec.name})
                    if output_dir and main:
                        write_json(os.path.join(output_dir, "compare.json"), outcome().to_json())
    except BaseException as err:
        if output_dir and main:
            with shielded():  # a second Ctrl-C must not cut the record short
                meta.update(status="interrupted", reason=stop_reason(err))
                try:
                    write_json(os.path.join(output_dir, "compare.json"), outcome().to_json())
                except Exception:  # noqa: BLE001 - the error that stopped the runs is the one to report
                    pass
        raise
    meta["status"] = "complete"
    result = outcome()
    if output_dir and main:
        write_compare_outputs(result, output_dir)
    return result
