"""How stable are layer rankings? Pairwise Kendall τ, Spearman ρ and top-k overlap, and the paper's study.

The study (`stability_study`, also ``act-lora stability`` and ``benchmarks/stability_study.py``) checks the
paper's claim on the bundled MiniLM, offline: activation-norm rankings versus gradient-norm rankings across
seeds and across GLUE tasks. The two sources of randomness are varied separately, as a fair comparison
needs: seed s draws the calibration sample (head fixed), or the task head (sample fixed); activations do not
depend on the head, gradients depend on both. The gradient ranking is taken with a warmed-up head (a few
head-only training steps on the calibration batches), the paper's gradient-guided importance. Mean pairwise
Kendall τ comes with a jackknife 95 % CI over rankings (pairs sharing a ranking are not independent).
"""
import itertools
import logging
import math
import os
import random
import time
import warnings

import numpy as np

from .._checks import check_block_count, check_int, ranking_of, score_list
from .._io import new_figure, save_figure, write_json, write_text
from ..data.glue import get_task
from ..model.hf import load_classifier, resolve_model_path
from .calibration import load_examples, make_batches, sample_examples
from .profiling import HEAD_WARMUP_LR, profile_activations, profile_gradients

logger = logging.getLogger(__name__)

STUDY_HEAD_WARMUP_STEPS = 16

STUDY_TASKS = ("rte", "mrpc", "cola", "stsb", "sst2")


def _top(scores, k):
    return set(ranking_of(scores)[:k])


def _default_k(n, k):
    if k is None:
        return max(1, math.ceil(n / 2))
    return check_block_count("k", k, n)


def ranking_agreement(a, b, *, k=None):
    """Kendall τ, Spearman ρ and top-k Jaccard overlap between two score vectors (k: half the blocks).

    τ and ρ are NaN when a vector is constant (no ranking to compare).
    """
    from scipy import stats

    a, b = score_list(a, "a"), score_list(b, "b")
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"score vectors need one length ≥ 2, got {len(a)} and {len(b)}")
    k = _default_k(len(a), k)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on constant input and returns NaN, which we keep
        tau = float(stats.kendalltau(a, b).statistic)
        rho = float(stats.spearmanr(a, b).statistic)
    top_a, top_b = _top(a, k), _top(b, k)
    return {"kendall_tau": tau, "spearman_rho": rho, "topk_jaccard": len(top_a & top_b) / len(top_a | top_b),
            "k": k}


def ranking_stability(scores_list, *, k=None):
    """Mean and std (over all pairs) of Kendall τ, Spearman ρ and top-k Jaccard between rankings.

    `scores_list`: ≥ 2 LayerScores or lists of per-block scores of one length. ``k`` defaults to half the
    blocks, rounded up. Undefined pairs (a constant vector) are left out of τ/ρ and counted in
    ``undefined_pairs``.
    """
    if isinstance(scores_list, (str, bytes, dict)) or not hasattr(scores_list, "__iter__"):
        raise TypeError(f"scores_list must be a list of score vectors, got {type(scores_list).__name__}")
    vectors = [score_list(s, f"scores_list[{i}]") for i, s in enumerate(scores_list)]
    if len(vectors) < 2:
        raise ValueError(f"ranking stability needs at least 2 rankings, got {len(vectors)}")
    lengths = {len(v) for v in vectors}
    if len(lengths) != 1:
        raise ValueError(f"all rankings must cover the same blocks; got lengths {sorted(lengths)}")
    k = _default_k(lengths.pop(), k)
    pairs = [ranking_agreement(a, b, k=k) for a, b in itertools.combinations(vectors, 2)]
    out = {"n_rankings": len(vectors), "n_pairs": len(pairs), "k": k}
    undefined = 0
    for key in ("kendall_tau", "spearman_rho", "topk_jaccard"):
        values = np.array([p[key] for p in pairs], dtype=float)
        defined = values[~np.isnan(values)]
        undefined = max(undefined, len(values) - len(defined))
        out[f"{key}_mean"] = float(defined.mean()) if len(defined) else float("nan")
        out[f"{key}_std"] = float(defined.std()) if len(defined) else float("nan")
    out["undefined_pairs"] = undefined
    out["kendall_tau_ci95"] = _jackknife_ci(vectors, k)
    return out


def _jackknife_ci(vectors, k, confidence=0.95):
    """Jackknife t-interval of the mean pairwise Kendall τ, leaving out one ranking at a time.

    Pairs that share a ranking are dependent, so the pairs' own spread understates the uncertainty; the
    jackknife over rankings does not. Clipped to τ's range [-1, 1]. Needs ≥ 3 rankings (else [nan, nan]).
    """
    from scipy import stats

    n = len(vectors)
    tau = {}
    for i, j in itertools.combinations(range(n), 2):
        tau[(i, j)] = ranking_agreement(vectors[i], vectors[j], k=k)["kendall_tau"]
    if n < 3:
        return [float("nan"), float("nan")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices: τ undefined for every pair
        full = float(np.nanmean(list(tau.values())))
        leave_out = np.array([np.nanmean([v for (i, j), v in tau.items() if m not in (i, j)]) for m in range(n)])
    if np.isnan(full) or np.isnan(leave_out).any():
        return [float("nan"), float("nan")]
    se = math.sqrt((n - 1) / n * float(((leave_out - leave_out.mean()) ** 2).sum()))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * se
    return [max(-1.0, full - half), min(1.0, full + half)]  # τ lives in [-1, 1]


# ---------------------------------------------------------------------------------------------- the study
def _study_tasks(data_dir, tasks):
    if data_dir is None:
        return ["builtin"]
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"GLUE data directory not found: {data_dir}")
    names = [get_task(t).name for t in (tasks or STUDY_TASKS)]
    present = [t for t in names if os.path.isfile(os.path.join(data_dir, get_task(t).folder, "train.tsv"))]
    if not present:
        raise FileNotFoundError(f"none of the tasks {names} has a train.tsv under {data_dir}")
    return present


def _study_examples(data_dir, task, samples, seed):
    if task == "builtin":
        rng = random.Random(seed)  # built-in sentences have no labels: the gradient baseline gets seeded ones
        pool = [e._replace(label=rng.randrange(2)) for e in load_examples()]
        return sample_examples(pool, samples, seed)
    return sample_examples(load_examples(data_dir=data_dir, task=task), samples, seed)


def stability_study(*, model=None, data_dir=None, tasks=None, seeds=10, samples=64, batch_size=16, max_seq_len=128,
                    k=None, head_warmup_steps=STUDY_HEAD_WARMUP_STEPS, head_warmup_lr=HEAD_WARMUP_LR, out_dir=None,
                    progress=True):
    """Activation vs gradient rankings across `seeds` and GLUE tasks; returns (and writes) the results.

    For each task and seed s, two experiments: **sample** — s draws the `samples` calibration examples, the
    head is seed 0's: the activation profile (``input_norm``) and the gradient profile are computed on the
    same batches; **head** — the sample is seed 0's, s draws the task head: the gradient profile only
    (activations do not depend on the head). The gradient profile warms the head up for `head_warmup_steps`
    head-only steps first (0: a random head). Without `data_dir` the built-in sentences with seeded random
    labels stand in for a task. With `out_dir`: ``stability.json`` (all scores and statistics),
    ``stability.png`` and ``stability.txt``.
    """
    import torch

    check_int("seeds (stability compares seeds)", seeds, 2)
    check_int("head_warmup_steps", head_warmup_steps, 0)
    path = resolve_model_path(model or "minilm")
    task_names = _study_tasks(data_dir, tasks)
    tokenizer = None
    models = {}
    results, started = {}, time.perf_counter()

    def gradient(net, batches, head_seed):
        return profile_gradients(net, batches, seed=head_seed, head_warmup_steps=head_warmup_steps,
                                 head_warmup_lr=head_warmup_lr, progress=False).scores

    for task in task_names:
        num_labels = 2 if task == "builtin" else get_task(task).num_labels
        if num_labels not in models:
            torch.manual_seed(0)
            models[num_labels], tokenizer = load_classifier(path, num_labels=num_labels)
        net = models[num_labels]
        activation, gradient_sample, gradient_head = [], [], []
        fixed_batches = None
        for seed in range(seeds):
            examples = _study_examples(data_dir, task, samples, seed)
            batches = make_batches(tokenizer, examples, batch_size=batch_size, max_seq_len=max_seq_len)
            if seed == 0:
                fixed_batches = batches
            activation.append(profile_activations(net, batches, progress=False).scores)
            gradient_sample.append(gradient(net, batches, 0))
            gradient_head.append(gradient(net, fixed_batches, seed))
            if progress:
                logger.info(f"  {task} seed {seed}: done ({time.perf_counter() - started:.0f}s)")
        cross = [ranking_agreement(a, g, k=k) for a, g in zip(activation, gradient_sample)]
        results[task] = {
            "activation_scores": activation, "gradient_scores": gradient_sample,
            "gradient_head_scores": gradient_head,
            "activation": ranking_stability(activation, k=k), "gradient": ranking_stability(gradient_sample, k=k),
            "gradient_head": ranking_stability(gradient_head, k=k),
            "activation_vs_gradient": {key: float(np.nanmean([c[key] for c in cross]))
                                       for key in ("kendall_tau", "spearman_rho", "topk_jaccard")},
            "activation_top_k": sorted(_top(np.mean(activation, 0).tolist(), cross[0]["k"])),
            "gradient_top_k": sorted(_top(np.mean(gradient_sample, 0).tolist(), cross[0]["k"])),
        }
    summary = {"model": path, "data_dir": data_dir, "seeds": seeds, "samples": samples,
               "batch_size": batch_size, "max_seq_len": max_seq_len, "head_warmup_steps": head_warmup_steps,
               "head_warmup_lr": head_warmup_lr,
               "design": "sample: seed draws the calibration sample (head seed 0); head: seed draws the task "
                         "head (sample of seed 0); gradients with a warmed-up head",
               "tasks": results, "seconds": round(time.perf_counter() - started, 1)}
    if len(task_names) > 1:
        summary["across_tasks"] = {
            kind: ranking_stability([np.mean(results[t][f"{kind}_scores"], 0).tolist() for t in task_names], k=k)
            for kind in ("activation", "gradient")}
    summary["table"] = format_table(summary)
    if out_dir is not None:
        _write_study(summary, out_dir)
    return summary


def _tau(stat):
    ci = stat.get("kendall_tau_ci95") or [float("nan")] * 2
    return f"{stat['kendall_tau_mean']:>6.3f} [{ci[0]:.2f},{ci[1]:.2f}]"


def format_table(summary):
    """The study's results as a fixed-width text table."""
    header = (f"{'task':<8} {'act tau [95% CI]':>22} {'J@k':>5} {'grad tau (sample)':>22} {'J@k':>5} "
              f"{'grad tau (head)':>22} {'J@k':>5} {'act~grad tau':>12} {'J@k':>5}  act top-k / grad top-k")
    lines = [header, "-" * len(header)]
    for task, r in summary["tasks"].items():
        a, g, c = r["activation"], r["gradient"], r["activation_vs_gradient"]
        h = r.get("gradient_head", g)
        lines.append(f"{task:<8} {_tau(a):>22} {a['topk_jaccard_mean']:>5.2f} {_tau(g):>22} "
                     f"{g['topk_jaccard_mean']:>5.2f} {_tau(h):>22} {h['topk_jaccard_mean']:>5.2f} "
                     f"{c['kendall_tau']:>12.3f} {c['topk_jaccard']:>5.2f}  {r['activation_top_k']} / "
                     f"{r['gradient_top_k']}")
    across = summary.get("across_tasks")
    if across:
        a, g = across["activation"], across["gradient"]
        lines.append(f"{'tasks':<8} {_tau(a):>22} {a['topk_jaccard_mean']:>5.2f} {_tau(g):>22} "
                     f"{g['topk_jaccard_mean']:>5.2f}   (rankings of the per-task means, compared across tasks)")
    k = next(iter(summary["tasks"].values()))["activation"]["k"]
    lines.append(f"tau: mean over seed pairs [jackknife 95 % CI]; J@k: top-{k} Jaccard; sample: the seed draws "
                 f"the calibration sample; head: the seed draws the task head (warm-up "
                 f"{summary.get('head_warmup_steps', 0)} steps); act~grad: same-seed agreement, mean over "
                 f"{summary['seeds']} seeds")
    return "\n".join(lines)


def _write_study(summary, out_dir):
    os.makedirs(out_dir, exist_ok=True)
    tasks = list(summary["tasks"])
    fig, axes = new_figure(len(tasks), width=3.2 + 1 / len(tasks), height=3.6)
    for ax, task in zip(axes, tasks):
        r = summary["tasks"][task]
        for offset, kind, color in ((-0.2, "activation", "tab:blue"), (0.2, "gradient", "tab:orange")):
            shares = np.array(r[f"{kind}_scores"])
            shares = shares / shares.sum(axis=1, keepdims=True)
            x = np.arange(shares.shape[1]) + offset
            ax.bar(x, shares.mean(0), width=0.4, yerr=shares.std(0), color=color, label=kind, capsize=2)
        c = r["activation_vs_gradient"]
        ax.set(title=f"{task}: act~grad τ={c['kendall_tau']:.2f}", xlabel="block")
        ax.set_xticks(range(len(r["activation_scores"][0])))
    axes[0].set_ylabel(f"share of importance (mean±std, {summary['seeds']} seeds)")
    axes[0].legend(fontsize=8)
    save_figure(fig, os.path.join(out_dir, "stability.png"))
    write_json(os.path.join(out_dir, "stability.json"), summary)
    write_text(os.path.join(out_dir, "stability.txt"), summary["table"] + "\n")
