"""Statistics for multi-seed comparisons, checked against scipy and against hand-computed values."""
import math

import numpy as np
import pytest
from scipy import stats

from act_lora_fast.data.glue import get_task
from act_lora_fast.measure.stats import chance_score, one_sample_p, paired, summary, t_interval


def test_summary_matches_the_t_interval_by_hand():
    values = [80.1, 81.9, 80.6, 81.2, 80.8]
    out = summary(values)
    mean, sd = np.mean(values), np.std(values, ddof=1)
    half = stats.t.ppf(0.975, 4) * sd / math.sqrt(5)
    assert out["n"] == 5 and out["mean"] == pytest.approx(mean) and out["std"] == pytest.approx(sd)
    assert out["ci95"] == pytest.approx([mean - half, mean + half])
    assert t_interval(values, 0.9)[1] - mean == pytest.approx(stats.t.ppf(0.95, 4) * sd / math.sqrt(5))


def test_one_value_has_no_spread():
    out = summary([3.0])
    assert out == {"n": 1, "mean": 3.0, "std": 0.0, "ci95": [3.0, 3.0]}


def test_paired_difference_matches_scipy():
    a = [80.5, 79.9, 81.2, 80.1, 80.8, 79.5, 81.0]
    b = [80.0, 79.8, 80.1, 79.7, 80.9, 78.8, 80.2]
    out = paired(a, b)
    diff = np.subtract(a, b)
    assert out["mean"] == pytest.approx(diff.mean()) and out["n"] == 7
    assert out["p_value"] == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert out["wilcoxon_p"] == pytest.approx(stats.wilcoxon(a, b).pvalue)
    low, high = out["ci95"]
    assert low < diff.mean() < high
    # the CI excludes 0 exactly when the two-sided test rejects at 5 %
    assert (low > 0) == (out["p_value"] < 0.05)


def test_paired_with_few_pairs_skips_wilcoxon_and_handles_constant_differences():
    out = paired([1.0, 2.0, 3.0], [0.5, 1.0, 2.0])
    assert out["wilcoxon_p"] is None and 0 < out["p_value"] < 1
    constant = paired([2.0, 3.0], [1.0, 2.0])
    assert constant["mean"] == 1.0 and math.isnan(constant["p_value"])
    single = paired([2.0], [1.0])
    assert single["ci95"] == [1.0, 1.0] and math.isnan(single["p_value"])


@pytest.mark.parametrize("bad, error, match", [
    (([1.0, 2.0], [1.0]), ValueError, "equal lengths"),
    (([1.0, float("nan")], [1.0, 2.0]), ValueError, "must be finite"),
    (("12", [1.0, 2.0]), TypeError, "must be a list of numbers"),
    (([True, 2.0], [1.0, 2.0]), TypeError, "must hold numbers"),
    (([], []), ValueError, "at least 1"),
])
def test_bad_input_names_the_problem(bad, error, match):
    with pytest.raises(error, match=match):
        paired(*bad)


def test_one_sample_test_against_chance():
    above = [80.1, 81.9, 80.6]
    assert one_sample_p(above, 50.9) == pytest.approx(stats.ttest_1samp(above, 50.9, alternative="greater").pvalue)
    assert one_sample_p([1.7, 8.1, -2.0], 0.0) > 0.05   # CoLA-like MCC: not above chance
    assert one_sample_p([5.0, 5.0], 0.0) == 0.0 and one_sample_p([5.0, 5.0], 9.0) == 1.0
    with pytest.raises(ValueError, match="alternative"):
        one_sample_p(above, 0.0, alternative="bigger")


def test_chance_levels_per_task():
    assert chance_score(get_task("cola"), [0, 1, 1]) == 0.0           # MCC
    assert chance_score(get_task("stsb"), None) == 0.0                # correlations
    assert chance_score(get_task("sst2"), [1, 1, 0, 1]) == pytest.approx(75.0)
    assert chance_score(get_task("sst2")) == pytest.approx(50.0)
    # MRPC: (accuracy + F1) / 2 of always predicting the majority (positive) class: 68 % positives
    labels = [1] * 68 + [0] * 32
    f1 = 2 * 68 / (68 + 100)
    assert chance_score(get_task("mrpc"), labels) == pytest.approx(100 * (0.68 + f1) / 2)
    assert chance_score(get_task("mrpc"), [0] * 3 + [1]) == pytest.approx(100 * 0.75 / 2)  # F1 0
