"""The ablation's training runs: head only, each single block, all blocks, and every size-k subset, per
seed and task, each a full `train` run from the same pretrained weights, data and hyper-parameters.

``ablation.json`` (in ``output_dir/<task>/``) is rewritten after every run, so a long ablation leaves usable
partial results and ``resume=True`` trains only what is missing. Runs go seed-major across tasks (seed 0 of
every task first), so every finished seed is a complete set.
"""
import dataclasses
import itertools
import json
import os
import time

from ... import _dist
from ..._checks import check_bool, check_int
from ..._io import write_json
from ...method.profiling import GRADIENT_METRIC, HEAD_WARMUP_LR, UPDATE_METRIC
from ...model.anatomy import find_blocks
from .. import distributed as dist_utils
from ..compare.matrix import seed_list
from ..compare.run import GRADIENT_WARMUP_STEPS
from ..compare.selections import profile_seeds
from ..config import TrainConfig
from ..lock import locks_output_dir
from ..loop import set_seed, train
from ..tasks import task_for

MAX_BLOCKS = 8
PROFILED = {"activation": "input_norm", "gradient": GRADIENT_METRIC, "update": UPDATE_METRIC}  # score: metric
RESULT_OPTIONS = ("model", "epochs", "batch_size", "eval_batch_size", "learning_rate", "weight_decay",
                  "warmup_ratio", "grad_accum_steps", "max_grad_norm", "r", "alpha", "dropout", "target_modules",
                  "modules_to_save", "max_seq_len", "max_train_samples", "max_eval_samples", "calibration_samples",
                  "precision", "loraplus_lr_ratio", "group_by_length", "backend")


def ablation_subsets(n_blocks, k=None):
    """The subsets an ablation trains, in order: head only ``[]``, each single block, all blocks, every size-k
    subset (k defaults to n/2, rounded down); each once."""
    check_int("n_blocks", n_blocks, 1)
    k = n_blocks // 2 if k is None else check_int("k", k, 1)
    if k > n_blocks:
        raise ValueError(f"k={k} exceeds the model's {n_blocks} blocks")
    subsets = [()] + [(i,) for i in range(n_blocks)] + [tuple(range(n_blocks))]
    subsets += list(itertools.combinations(range(n_blocks), k))
    return [list(s) for s in dict.fromkeys(subsets)]


def _settings(base, task, k, n_blocks):
    return {"task": task, "k": k, "n_blocks": n_blocks,
            "train": {name: getattr(base, name) for name in RESULT_OPTIONS}}


def _load_previous(path, settings):
    """The finished runs of an earlier ablation.json at `path` whose settings equal these: ``{(seed, blocks): run}``."""
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as handle:
        try:
            old = json.load(handle)
        except json.JSONDecodeError as err:
            raise ValueError(f"cannot resume from {path}: not valid JSON (line {err.lineno}: {err.msg})") from None
    if not isinstance(old, dict) or not isinstance(old.get("runs"), list):
        raise ValueError(f"cannot resume from {path}: not an ablation.json (needs a 'runs' list)")
    differ = [key for key in ("task", "k", "n_blocks", "train") if old.get(key) != settings[key]]
    if differ:
        shown = "; ".join(f"{key}: {old.get(key)!r} there, {settings[key]!r} now" for key in differ)
        raise ValueError(f"cannot resume from {path}: its settings differ ({shown})")
    return {(run["seed"], tuple(run["blocks"])): run for run in old["runs"]}


@locks_output_dir  # one ablation per folder (see `lock`)
def run_ablation(base, *, tasks=None, seeds=3, k=None, max_subsets=None, output_dir=None, resume=False,
                 data=None, progress=True, on_run=None):
    """Train every ablation subset (`ablation_subsets`) for every seed of every task; returns
    ``{task: ablation dict}`` (what ``ablation.json`` holds: settings, ``profiles`` per seed and ``runs``).

    `tasks`: task names (default ``base.task``); `seeds`: a count or a list; `k`: the subset size (default
    n/2); a model with more than 8 blocks is refused unless `max_subsets` allows the number of subsets it
    means. `data`: ``{task: GlueData}`` (a `TextData` for task "text") to use instead of loading; a causal LM
    has no head, so its ablation has no head-only run. `on_run(task, run, done, planned)` is
    called after every run.
    """
    if not isinstance(base, TrainConfig):
        raise TypeError(f"base must be a TrainConfig, got {type(base).__name__}")
    tasks = [base.task] if tasks is None else ([tasks] if isinstance(tasks, str) else list(tasks))
    kinds = {name: task_for(name) for name in tasks}
    seeds = seed_list(seeds, base)
    check_int("max_subsets", max_subsets, 1, optional=True)
    check_bool("resume", resume)
    check_bool("progress", progress)

    set_seed(base.seed)
    model, _ = kinds[tasks[0]].load_model(base)
    n_blocks = len(find_blocks(model))
    subsets = ablation_subsets(n_blocks, k)
    if not kinds[tasks[0]].heads(model, base):
        subsets = subsets[1:]  # a causal LM has no head: nothing would train without LoRA
    k = len(subsets[-1])
    if n_blocks > MAX_BLOCKS and (max_subsets is None or len(subsets) > max_subsets):
        raise ValueError(f"the model has {n_blocks} blocks: an ablation means {len(subsets)} subsets x "
                         f"{len(seeds)} seeds x {len(tasks)} tasks = {len(subsets) * len(seeds) * len(tasks)} "
                         f"runs; pass max_subsets={len(subsets)} (--max-subsets) to run it anyway")
    del model

    ctx = dist_utils.init_distributed(base.device)
    main = _dist.is_main_process()
    state = {}
    for name in tasks:
        task = kinds[name]
        task_base = dataclasses.replace(base, task=task.name)
        task_data = (data or {}).get(name) or task.load_data(task_base)
        folder = os.path.join(output_dir, task.name) if output_dir else None
        settings = _settings(base, task.name, k, n_blocks)
        previous = _load_previous(os.path.join(folder, "ablation.json"), settings) if resume and folder else {}
        if folder and not resume and os.path.exists(os.path.join(folder, "ablation.json")) and not base.overwrite:
            raise FileExistsError(f"{folder} already holds an ablation.json; pass resume=True (--resume) to "
                                  "continue it or overwrite=True (--overwrite) to start again")
        set_seed(base.seed)
        model, tokenizer = task.load_model(task_base)
        model.to(ctx.device)
        train_set, _ = task.datasets(task_data, tokenizer, task_base)
        scores, seconds = profile_seeds(model, train_set, task_base, ctx, seeds=seeds, needed=set(PROFILED.values()),
                                        metric="input_norm", gradient_warmup_steps=GRADIENT_WARMUP_STEPS,
                                        gradient_warmup_lr=HEAD_WARMUP_LR)
        del model
        profiles = {score: {str(seed): [float(v) for v in scores[(seed, metric)].scores] for seed in seeds}
                    for score, metric in PROFILED.items()}
        state[task.name] = {**settings, "seeds": seeds, "subsets": subsets, "data_source": task_data.source,
                            "train_examples": len(task_data.train),
                            "eval_examples": {n: len(rows) for n, rows in task_data.eval.items()},
                            "profiles": profiles,
                            "profile_seconds": {score: sum(seconds[(s, metric)] for s in seeds) / len(seeds)
                                                for score, metric in PROFILED.items()},
                            "runs": [], "status": "running", "_data": task_data, "_folder": folder,
                            "_previous": previous}

    planned = len(subsets) * len(seeds) * len(tasks)
    done = 0
    bar = None
    if progress and main:
        from tqdm.auto import tqdm
        bar = tqdm(total=planned, desc="ablation runs", dynamic_ncols=True)
    for seed in seeds:
        for name, entry in state.items():
            for blocks in subsets:
                earlier = entry["_previous"].get((seed, tuple(blocks)))
                if earlier is None:
                    run = _train_one(base, entry, blocks, seed)
                else:
                    run = earlier
                entry["runs"].append(run)
                done += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(task=name, seed=seed, blocks=",".join(map(str, blocks)) or "head")
                if on_run is not None:
                    on_run(name, run, done, planned)
                if entry["_folder"] and main and earlier is None:
                    _write(entry)
    if bar is not None:
        bar.close()
    for entry in state.values():
        entry["status"] = "complete"
        if entry["_folder"] and main:
            _write(entry)
    return {name: _public(entry) for name, entry in state.items()}


def _train_one(base, entry, blocks, seed):
    selection = dict(selection="fixed", layers=list(blocks)) if blocks else dict(selection="none", layers=None)
    config = dataclasses.replace(base, task=entry["task"], seed=seed, k=None, fraction=None, cumulative=None,
                                 resume_from=None, output_dir=None, save_adapter=False, plots=False,
                                 progress=False, **selection)
    tick = time.perf_counter()
    report = train(config, data=entry["_data"]).report
    return {"blocks": list(blocks), "seed": seed, "score": report["history"][-1]["score"],
            "metrics": report["history"][-1]["metrics"],
            "epoch_scores": [h["score"] for h in report["history"]],
            "optimizer_steps": report["optimizer_steps"], "train_seconds": report["train_seconds"],
            "wall_seconds": time.perf_counter() - tick, "lora_parameters": report["lora_parameters"],
            "step_ms_training": report["step_time_ms"]["step"]}


def _public(entry):
    return {k: v for k, v in entry.items() if not k.startswith("_")}


def _write(entry):
    os.makedirs(entry["_folder"], exist_ok=True)
    write_json(os.path.join(entry["_folder"], "ablation.json"), _public(entry))
