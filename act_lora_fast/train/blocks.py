"""Which blocks a run trains: its calibration sample, the profile its selection ranks by, the selection, and
the same choice on every rank (scores are all-reduced; rank 0's choice is broadcast)."""
import random
import time

from .._checks import check_layers
from ..method.batches import without_labels
from ..method.profiling import profile_activations, profile_gradients, profile_updates
from ..method.selection import select_layers
from ..model.anatomy import find_blocks
from . import distributed as dist_utils
from .evaluate import to_device


def calibration_batches(dataset, config, ctx):
    """This rank's share of a seeded calibration sample of the training set, as model input batches."""
    n = min(config.calibration_samples, len(dataset))
    picked = random.Random(config.seed).sample(range(len(dataset)), n)
    mine = picked[ctx.rank::ctx.world_size]
    batches = []
    for start in range(0, len(mine), config.eval_batch_size):
        batch = dataset.collate([dataset[i] for i in mine[start:start + config.eval_batch_size]])
        batches.append(to_device(batch, ctx.device))
    return batches


def needs_profile(config):
    """Whether `config`'s selection needs block scores (positional baselines don't, unless cumulative)."""
    if config.selection in ("all", "none"):
        return False
    return config.selection in ("activation", "gradient", "bottom") or config.cumulative is not None


def profile_kind(config):
    return "gradient" if config.selection == "gradient" else "activation"


def choose_layers(model, config, calibration, ctx, *, scores=None):
    """Profile (when the selection needs scores and none are given) and select blocks, alike on every rank.

    Returns (layers, scores, profile_seconds); `scores` is the `LayerScores` used, or None.
    """
    n_blocks = len(find_blocks(model).blocks)
    if config.selection == "all":
        return list(range(n_blocks)), None, 0.0
    if config.selection == "none":
        return [], None, 0.0
    if config.selection == "fixed":
        return check_layers(config.layers, n_blocks), None, 0.0
    seconds = 0.0
    if scores is None and needs_profile(config):
        start = time.perf_counter()
        progress = config.progress and ctx.is_main
        if config.selection == "gradient":
            scores = profile_gradients(model, calibration, seed=config.seed,
                                       target_modules=config.target_modules, progress=progress,
                                       head_warmup_steps=config.gradient_warmup_steps)
        elif config.metric == "update":  # Σ‖x‖·‖dy‖ needs the loss, so the labels stay
            scores = profile_updates(model, calibration, seed=config.seed, target_modules=config.target_modules,
                                     progress=progress, head_warmup_steps=config.gradient_warmup_steps)
        else:
            scores = profile_activations(model, without_labels(calibration), metric=config.metric,
                                         target_modules=config.target_modules, progress=progress)
        seconds = time.perf_counter() - start
    strategy = "top" if config.selection in ("activation", "gradient") else config.selection
    layers = select_layers(scores if scores is not None else [0.0] * n_blocks, k=config.k,
                           fraction=config.fraction, cumulative=config.cumulative, strategy=strategy,
                           seed=config.seed)
    # Scores are all-reduced, so ranks agree; broadcasting rank 0's choice also guards against float ties.
    layers = dist_utils.broadcast_object([int(i) for i in layers], ctx)
    return layers, scores, seconds


def scores_report(scores, reused):
    if scores is None:
        return None
    return {"metric": scores.metric, "scores": [float(s) for s in scores.scores],
            "ranking": [int(i) for i in scores.ranking()], "reused_profile": reused}
