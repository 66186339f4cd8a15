"""Which blocks get LoRA: top-k, a fraction, or the paper's cumulative-importance threshold, plus baselines."""
import math
import numbers
import random

STRATEGIES = ("top", "bottom", "random", "first", "last", "all")


def _score_list(scores):
    from .profiling import LayerScores

    if isinstance(scores, LayerScores):
        scores = scores.scores
    if isinstance(scores, (str, bytes, dict)) or not hasattr(scores, "__iter__"):
        raise TypeError(f"scores must be a LayerScores or a list of numbers, got {type(scores).__name__}")
    scores = list(scores)
    if not scores:
        raise ValueError("scores is empty: there are no blocks to select from")
    for index, value in enumerate(scores):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"scores[{index}] is {value!r} ({type(value).__name__}), expected a number")
        if not math.isfinite(value):
            raise ValueError(f"scores[{index}] is {value}: scores must be finite (NaN or inf found)")
    return [float(v) for v in scores]


def _ranking(scores):
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))


def cumulative_count(scores, share):
    """The smallest number of top-ranked blocks whose scores sum to at least `share` of the total."""
    if any(s < 0 for s in scores):
        raise ValueError("cumulative selection needs non-negative scores")
    total = sum(scores)
    if total <= 0:
        raise ValueError("cumulative selection needs a positive total score (all scores are 0)")
    running = 0.0
    for count, index in enumerate(_ranking(scores), start=1):
        running += scores[index]
        if running >= share * total * (1 - 1e-12):  # a share of exactly 1.0 must not miss by rounding
            return count
    return len(scores)


def _count(scores, k, fraction, cumulative):
    n = len(scores)
    if k is not None:
        if isinstance(k, bool) or not isinstance(k, numbers.Integral):
            raise TypeError(f"k must be an int, got {k!r}")
        if not 1 <= k <= n:
            raise ValueError(f"k must be between 1 and the number of blocks ({n}), got {k}")
        return int(k)
    value, name = (fraction, "fraction") if fraction is not None else (cumulative, "cumulative")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not 0 < value <= 1:
        raise ValueError(f"{name} must be in (0, 1], got {value}")
    if fraction is not None:
        # the tolerance keeps e.g. 0.1 * 30 = 3.0000000000000004 from rounding up to 4
        return max(1, min(n, math.ceil(fraction * n - 1e-9)))
    return cumulative_count(scores, float(cumulative))


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
    (see `act_lora_fast.cost.select_within_budget`).
    """
    scores = _score_list(scores)
    counts = {"k": k, "fraction": fraction, "cumulative": cumulative}
    given = [name for name, value in counts.items() if value is not None]
    if budget_ms is not None or budget_bytes is not None:
        if given:
            raise ValueError(f"give either a budget or {'/'.join(given)}, not both")
        if cost_model is None:
            raise ValueError("budget_ms / budget_bytes need a cost_model to price each block")
        if strategy != "top":
            raise ValueError(f"budgeted selection ranks by score (strategy='top'), got strategy={strategy!r}")
        from .cost import select_within_budget

        return select_within_budget(scores, cost_model, budget_ms=budget_ms, budget_bytes=budget_bytes)
    if cost_model is not None:
        raise ValueError("cost_model is only used with budget_ms or budget_bytes")
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
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
        chosen = _ranking(scores)[:count]
    elif strategy == "bottom":
        chosen = sorted(range(n), key=lambda i: (scores[i], -i))[:count]
    elif strategy == "random":
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {seed!r}")
        chosen = random.Random(seed).sample(range(n), count)
    elif strategy == "first":
        chosen = range(count)
    else:
        chosen = range(n - count, n)
    return sorted(chosen)
