"""Which blocks each variant trains, per seed: the profiles the scored selections rank by, the random draws,
and the cost-aware choice within a predicted step-time budget."""
import dataclasses
import itertools
import math
import time

from ...method.batches import without_labels
from ...method.profiling import GRADIENT_METRIC, UPDATE_METRIC, profile_activations, profile_gradients, profile_updates
from ...method.selection import select_layers, selection_margin
from ..blocks import calibration_batches
from .matrix import SCORED

RANDOM_STREAM = 1_000_003   # random@ draws use seeds RANDOM_STREAM + d, d = 0, 1, ...: not the training seeds


def profile_kinds(kinds, metric):
    """The profiles (metric names) that variants of these kinds rank by."""
    needed = set()
    if set(kinds) & {"activation", "bottom", "cost_aware"}:
        needed.add(metric)
    if "block_output" in kinds:
        needed.add("block_output")
    if "gradient" in kinds:
        needed.add(GRADIENT_METRIC)
    if "update" in kinds:
        needed.add(UPDATE_METRIC)
    return needed


def profile_seeds(model, train_set, base, ctx, *, seeds, needed, metric, given=None, gradient_warmup_steps,
                  gradient_warmup_lr):
    """Every needed profile on each seed's calibration sample: ``({(seed, kind): LayerScores},
    {(seed, kind): seconds})``. `given` (``{"activation"|"gradient": LayerScores}``) is reused, at 0 s."""
    given = dict(given or {})
    scores, seconds = {}, {}
    for seed in seeds:
        calibration = None
        for kind in sorted(needed):
            reuse = given.get("gradient" if kind == GRADIENT_METRIC else "activation")
            if reuse is not None and (kind == GRADIENT_METRIC or kind == metric):
                scores[(seed, kind)], seconds[(seed, kind)] = reuse, 0.0
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
            scores[(seed, kind)], seconds[(seed, kind)] = result, time.perf_counter() - tick
    return scores, seconds


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


def profile_of(kind, metric):
    """The profile a variant kind ranks by (None: positional or random)."""
    return {"activation": metric, "bottom": metric, "cost_aware": metric, "gradient": GRADIENT_METRIC,
            "block_output": "block_output", "update": UPDATE_METRIC}.get(kind)


def select_variants(specs, scores, *, seeds, n_blocks, metric, random_draws, cost_model=None):
    """``{variant name: [{"seed", "draw", "layers", "profile", "margin"}, ...]}``: each variant's blocks per
    seed; ``random`` spreads at least `random_draws` draws over the seeds, each from its own seed."""
    draws_per_seed = math.ceil(random_draws / len(seeds))
    selections = {}
    for spec in specs:
        entries = []
        for seed_index, seed in enumerate(seeds):
            profile = profile_of(spec.kind, metric)
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
    return selections
