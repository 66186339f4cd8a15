"""Layer selection rules: top-k, fraction, the cumulative threshold, baselines, and clear errors."""
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from act_lora_fast import LayerScores, select_layers
from act_lora_fast.method.selection import cumulative_count

SCORES = [0.7, 3.1, 0.2, 2.4, 1.9, 0.2, 5.3]  # ranking: 6, 1, 3, 4, 0, 2, 5 (tie 2/5: lower index first)


def test_top_k_and_baselines():
    assert select_layers(SCORES, k=3) == [1, 3, 6]
    assert select_layers(LayerScores(SCORES), k=3) == [1, 3, 6]
    assert select_layers(SCORES, k=2, strategy="bottom") == [2, 5]
    assert select_layers(SCORES, k=3, strategy="bottom") == [0, 2, 5]
    assert select_layers(SCORES, k=2, strategy="first") == [0, 1]
    assert select_layers(SCORES, k=2, strategy="last") == [5, 6]
    assert select_layers(SCORES, strategy="all") == list(range(7))
    assert select_layers(SCORES, k=7) == list(range(7))


def test_random_is_seeded():
    picks = {tuple(select_layers(SCORES, k=3, strategy="random", seed=s)) for s in range(12)}
    assert len(picks) > 3 and all(len(p) == 3 and list(p) == sorted(p) for p in picks)
    assert select_layers(SCORES, k=3, strategy="random", seed=5) == select_layers(SCORES, k=3, strategy="random",
                                                                                     seed=5)


def test_fraction_rounds_up_at_least_one():
    assert select_layers(SCORES, fraction=0.5) == [1, 3, 4, 6]  # ceil(3.5) = 4
    assert select_layers(SCORES, fraction=0.01) == [6]
    assert select_layers(SCORES, fraction=1.0) == list(range(7))
    assert len(select_layers([1.0] * 30, fraction=0.1)) == 3  # 0.1·30 is 3.0000000000000004 in floats
    assert len(select_layers([1.0] * 10, fraction=0.3)) == 3


def test_cumulative_threshold_is_the_smallest_covering_set():
    total = sum(SCORES)  # 13.8; top sums: 5.3, 8.4, 10.8, 12.7, 13.4, ...
    assert select_layers(SCORES, cumulative=5.3 / total) == [6]
    assert select_layers(SCORES, cumulative=0.5) == [1, 6]
    assert select_layers(SCORES, cumulative=0.61) == [1, 3, 6]
    assert select_layers(SCORES, cumulative=1.0) == list(range(7))
    # baselines take the size the threshold chose
    assert select_layers(SCORES, cumulative=0.5, strategy="first") == [0, 1]


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.lists(st.floats(0.0, 100.0, allow_nan=False, allow_subnormal=False), min_size=1, max_size=24), st.floats(0.01, 1.0),
       st.integers(1, 24))
def test_properties(values, share, k):
    k = min(k, len(values))
    top = select_layers(values, k=k)
    assert len(top) == k and top == sorted(top)
    assert min(values[i] for i in top) >= max((values[i] for i in range(len(values)) if i not in top),
                                              default=-math.inf)
    if sum(values) > 0:
        chosen = select_layers(values, cumulative=share)
        covered = sum(values[i] for i in chosen)
        assert covered >= share * sum(values) * (1 - 1e-9)
        best_smaller = sum(sorted(values, reverse=True)[:len(chosen) - 1])
        assert best_smaller < share * sum(values) * (1 - 1e-12)  # one block fewer would not cover it
        assert len(chosen) == cumulative_count(values, share)


def test_clear_errors():
    with pytest.raises(ValueError, match=r"k must be an int between 1 and the number of blocks \(7\), got 0"):
        select_layers(SCORES, k=0)
    with pytest.raises(ValueError, match="got 8"):
        select_layers(SCORES, k=8)
    with pytest.raises(TypeError, match="k must be an int"):
        select_layers(SCORES, k=2.0)
    for bad in (0, 1.5, -0.2):
        with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\]"):
            select_layers(SCORES, fraction=bad)
    with pytest.raises(ValueError, match=r"cumulative must be in \(0, 1\]"):
        select_layers(SCORES, cumulative=1.2)
    with pytest.raises(ValueError, match=r"exactly one of k, fraction or cumulative \(got k, fraction\)"):
        select_layers(SCORES, k=2, fraction=0.5)
    with pytest.raises(ValueError, match=r"\(got none\)"):
        select_layers(SCORES)
    with pytest.raises(ValueError, match="scores is empty"):
        select_layers([], k=1)
    with pytest.raises(ValueError, match=r"scores\[2\] is nan"):
        select_layers([1.0, 2.0, float("nan")], k=1)
    with pytest.raises(TypeError, match="LayerScores or a list"):
        select_layers("1,2,3", k=1)
    with pytest.raises(ValueError, match="unknown strategy 'best'"):
        select_layers(SCORES, k=2, strategy="best")
    with pytest.raises(ValueError, match="positive total"):
        select_layers([0.0, 0.0], cumulative=0.5)
    with pytest.raises(ValueError, match="strategy='all' selects every block; drop k"):
        select_layers(SCORES, k=2, strategy="all")


def test_budget_arguments_are_validated_before_delegating():
    with pytest.raises(ValueError, match="need a cost_model"):
        select_layers(SCORES, budget_ms=10.0)
    with pytest.raises(ValueError, match="either a budget or k"):
        select_layers(SCORES, k=2, budget_bytes=1000, cost_model=object())
    with pytest.raises(ValueError, match="only used with budget"):
        select_layers(SCORES, k=2, cost_model=object())
    with pytest.raises(ValueError, match="strategy='top'"):
        select_layers(SCORES, budget_ms=1.0, cost_model=object(), strategy="random")
    with pytest.raises(TypeError, match="cost_model"):  # valid arguments reach act_lora_fast.measure.cost, which checks it
        select_layers(SCORES, budget_ms=1.0, cost_model=object())


def test_random_baseline_is_uniform_enough():
    counts = [0] * 7
    for seed in range(700):
        for i in select_layers(SCORES, k=2, strategy="random", seed=seed):
            counts[i] += 1
    assert all(150 < c < 250 for c in counts), counts  # expected 200 each
    random.seed(1)
    expected = random.random()
    random.seed(1)
    select_layers(SCORES, k=2, strategy="random", seed=3)
    assert random.random() == expected  # the global RNG is left alone
