"""Statistics for comparing methods over seeds: mean, std, t-based 95 % CI, paired differences, chance levels.

A comparison of two selections trained on the same seeds is paired: the seed fixes the data order, the
adapter's init and the head, so the per-seed differences remove most of the seed-to-seed spread. `paired`
gives their mean, a t-based CI and the paired t-test's p-value (scipy), plus the Wilcoxon signed-rank test's
p-value when there are enough pairs for it to reach p < 0.05 at all (n ≥ 6).
"""
import math
import numbers

import numpy as np

from .._checks import check_probability

WILCOXON_MIN_PAIRS = 6   # with n ≤ 5 pairs the exact two-sided Wilcoxon p-value can never go below 0.0625


def _values(name, values, minimum=1):
    if isinstance(values, (str, bytes, dict)) or not hasattr(values, "__iter__"):
        raise TypeError(f"{name} must be a list of numbers, got {type(values).__name__}")
    values = list(values)
    for value in values:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name} must hold numbers, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value!r}")
    if len(values) < minimum:
        raise ValueError(f"{name} needs at least {minimum} value(s), got {len(values)}")
    return np.asarray(values, dtype=np.float64)


def t_interval(values, confidence=0.95):
    """(low, high): the t-based confidence interval of the mean; (mean, mean) for one value (no spread known)."""
    from scipy import stats

    x = _values("values", values)
    check_probability("confidence", confidence)
    mean = float(x.mean())
    if len(x) < 2:
        return (mean, mean)
    half = float(stats.t.ppf(0.5 + confidence / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return (mean - half, mean + half)


def summary(values, confidence=0.95):
    """``{n, mean, std, ci95}``: std with ddof=1 (0 for one value), the t-based CI of the mean."""
    x = _values("values", values)
    return {"n": len(x), "mean": float(x.mean()), "std": float(x.std(ddof=1)) if len(x) > 1 else 0.0,
            "ci95": list(t_interval(x, confidence))}


def paired(a, b, confidence=0.95):
    """The paired difference a − b: ``{n, mean, std, ci95, p_value, wilcoxon_p}``.

    ``p_value``: the two-sided paired t-test (scipy.stats.ttest_rel); NaN with fewer than 2 pairs or when
    every difference is equal (no spread: the test is undefined). ``wilcoxon_p``: the two-sided Wilcoxon
    signed-rank test when there are at least ``WILCOXON_MIN_PAIRS`` pairs with a nonzero difference, else None.
    """
    from scipy import stats

    a, b = _values("a", a), _values("b", b)
    if len(a) != len(b):
        raise ValueError(f"paired values need equal lengths, got {len(a)} and {len(b)}")
    diff = a - b
    out = summary(diff, confidence)
    out["p_value"] = float("nan")
    if len(diff) >= 2 and np.ptp(diff) > 0:
        out["p_value"] = float(stats.ttest_rel(a, b).pvalue)
    out["wilcoxon_p"] = None
    if np.count_nonzero(diff) >= WILCOXON_MIN_PAIRS:
        out["wilcoxon_p"] = float(stats.wilcoxon(a, b).pvalue)
    return out


def one_sample_p(values, reference, alternative="greater"):
    """p-value of the one-sample t-test of mean(values) against `reference` (default: one-sided, greater).

    Values without spread (one value included) leave the test undefined: 0.0 when they lie on the tested
    side of the reference, 1.0 otherwise (a deterministic result taken at face value; callers that need
    real significance ask for at least 2 values, as `compare` does).
    """
    from scipy import stats

    x = _values("values", values)
    if alternative not in ("greater", "less", "two-sided"):
        raise ValueError(f"alternative must be 'greater', 'less' or 'two-sided', got {alternative!r}")
    if np.ptp(x) == 0:
        side = {"greater": x > reference, "less": x < reference, "two-sided": x != reference}[alternative]
        return 0.0 if side.all() else 1.0
    return float(stats.ttest_1samp(x, reference, alternative=alternative).pvalue)


def chance_score(task, labels=None):
    """A task's chance score in GLUE points (0-100), scored as the task is (`data.glue.task_score`).

    Each metric's chance value: accuracy → the majority class's rate on `labels` (the dev labels the task is
    scored on); F1 → the majority predictor's F1 (0 when the majority class is the negative one); MCC and
    correlations → 0. The score is their mean, as GLUE averages a task's metrics. Without `labels`,
    accuracy's chance is 1/num_labels and F1's is 0.
    """
    metrics = tuple(task.metrics)
    if task.is_regression:
        return 0.0
    values = []
    if labels is not None and len(labels):
        counts = np.bincount(np.asarray([int(v) for v in labels]), minlength=task.num_labels)
        majority, total = int(counts.argmax()), counts.sum()
        accuracy = counts[majority] / total
        f1 = 2 * counts[1] / (counts[1] + total) if majority == 1 and len(counts) > 1 else 0.0
    else:
        accuracy, f1 = 1.0 / task.num_labels, 0.0
    for metric in metrics:
        if metric == "accuracy":
            values.append(accuracy)
        elif metric == "f1":
            values.append(f1)
        else:  # matthews_correlation, pearson, spearmanr: 0 at chance
            values.append(0.0)
    return 100.0 * float(np.mean(values))
