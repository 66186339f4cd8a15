"""Which blocks get LoRA: top-k, a fraction, or the paper's cumulative-importance threshold, plus baselines."""
import math
import random

from .._checks import check_block_count, check_choice, check_fraction, check_int, ranking_of, score_list

STRATEGIES = ("top", "bottom", "random", "first", "last", "all")


def cumulative_count(scores, share):
    """The smallest number of top-ranked blocks whose scores sum to at least `share` of the total."""
    if any(s < 0 for s in scores):
        raise ValueError("cumulative selection needs non-negative scores")
    total = sum(scores)
    if total <= 0:
        raise ValueError("cumulative selection needs a positive total score (all scores are 0)")
    running = 0.0
    for count, index in enumerate(ranking_of(scores), start=1):
        running += scores[index]
        if running >= share * total * (1 - 1e-12):  # a share of exactly 1.0 must not miss by rounding
            return count
    return len(scores)


def _count(scores, k, fraction, cumulative):
    n = len(scores)
    if k is not None:
        return check_block_count("k", k, n)
    value = check_fraction("fraction" if fraction is not None else "cumulative",
                           fraction if fraction is not None else cumulative)
    if fraction is not None:
        # the tolerance keeps e.g. 0.1 * 30 = 3.0000000000000004 from rounding up to 4
        return max(1, min(n, math.ceil(fraction * n - 1e-9)))
    return cumulative_count(scores, float(value))


def select_layers(scores, *, k=None, fraction=None, cumulative=None, strategy="top", seed=0, budget_ms=None,
                  budget_bytes=None, cost_model=None):
    """Block indices (sorted) to put LoRA on.

    How many: exactly one of ``k`` (top-k), ``fraction`` of the blocks (rounded up, at least 1) or
    ``cumulative``: the smallest set of top-scored blocks covering that share of the total score (the
    paper's threshold mapping). Which: ``strategy`` ``"top"`` (the method), or the baselines ``"bottom"``
    (lowest scores), ``"random"`` (seeded), ``"first"``, ``"last"`` take the same number of blocks;
    ``"all"`` takes every block and no count. With ``cumulative`` the count comes from the scores, so the
    baselines are compared at the size the method chose.

    Alternatively a ``budget_ms`` / ``budget_bytes`` with a ``cost_model`` picks the best blocks that fit
    (see `act_lora_fast.measure.cost.select_within_budget`).
    """
    scores = score_list(scores)
    counts = {"k": k, "fraction": fraction, "cumulative": cumulative}
    given = [name for name, value in counts.items() if value is not None]
    if budget_ms is not None or budget_bytes is not None:
        if given:
            raise ValueError(f"give either a budget or {'/'.join(given)}, not both")
        if cost_model is None:
            raise ValueError("budget_ms / budget_bytes need a cost_model to price each block")
        if strategy != "top":
            raise ValueError(f"budgeted selection ranks by score (strategy='top'), got strategy={strategy!r}")
        if not callable(getattr(cost_model, "select_within_budget", None)):
            raise TypeError(f"cost_model must be a CostModel (act_lora_fast.CostModel), got "
                            f"{type(cost_model).__name__}")
        return cost_model.select_within_budget(scores, budget_ms=budget_ms, budget_bytes=budget_bytes)
    if cost_model is not None:
        raise ValueError("cost_model is only used with budget_ms or budget_bytes")
    check_choice("strategy", strategy, STRATEGIES)
    n = len(scores)
    if strategy == "all":
        if given:
            raise ValueError(f"strategy='all' selects every block; drop {'/'.join(given)}")
        return list(range(n))
    if len(given) != 1:
        raise ValueError("give exactly one of k, fraction or cumulative"
                         + (f" (got {', '.join(given)})" if given else " (got none)"))
    count = _count(scores, k, fraction, cumulative)
    if strategy == "top":
        chosen = ranking_of(scores)[:count]
    elif strategy == "bottom":
        chosen = sorted(range(n), key=lambda i: (scores[i], -i))[:count]
    elif strategy == "random":
        chosen = random.Random(check_int("seed", seed)).sample(range(n), count)
    elif strategy == "first":
        chosen = range(count)
    else:
        chosen = range(n - count, n)
    return sorted(chosen)


def selection_margin(scores, layers):
    """How decisively `layers` won: (lowest chosen score − highest unchosen score) / mean score.

    For a top-k selection this is the relative gap between the k-th and (k+1)-th ranked blocks; a margin
    near 0 means the selection is close to a tie-break (another calibration sample may flip it); a negative
    one means an unchosen block outscores a chosen one (a baseline, or a cost-aware pick). None when every
    block (or none) is chosen, or when the mean score is 0.
    """
    scores = score_list(scores)
    chosen = set(int(i) for i in layers)
    if not chosen or len(chosen) >= len(scores):
        return None
    mean = sum(scores) / len(scores)
    if mean == 0:
        return None
    lowest_in = min(scores[i] for i in chosen)
    highest_out = max(s for i, s in enumerate(scores) if i not in chosen)
    return (lowest_in - highest_out) / mean
