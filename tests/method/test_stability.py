"""Ranking stability statistics, and the study end to end at a toy size (built-in text and GLUE)."""
import json
import os

import pytest
from scipy import stats
from tests.models import minilm_path  # noqa: F401

from act_lora_fast import LayerScores, ranking_stability
from act_lora_fast.cli import main
from act_lora_fast.method.stability import ranking_agreement, stability_study

pytestmark = pytest.mark.usefixtures("one_thread")

GLUE = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "glue")


def test_identical_and_reversed_rankings():
    a = [0.3, 1.7, 0.9, 2.2, 0.1, 1.1, 0.6]
    same = ranking_stability([a, [2 * x for x in a], LayerScores(a)], k=3)
    assert same["n_rankings"] == 3 and same["n_pairs"] == 3 and same["k"] == 3
    for key in ("kendall_tau", "spearman_rho", "topk_jaccard"):
        assert same[f"{key}_mean"] == pytest.approx(1.0) and same[f"{key}_std"] == pytest.approx(0.0)
    flipped = ranking_agreement(a, [-x for x in a], k=3)
    assert flipped["kendall_tau"] == pytest.approx(-1.0) and flipped["spearman_rho"] == pytest.approx(-1.0)
    assert flipped["topk_jaccard"] == 0.0


def test_statistics_match_scipy_pairwise():
    vectors = [[0.2, 1.3, 0.7, 2.9, 1.1], [0.3, 0.9, 1.4, 2.5, 0.8], [1.9, 0.2, 0.6, 1.0, 2.4]]
    result = ranking_stability(vectors, k=2)
    pairs = [(0, 1), (0, 2), (1, 2)]
    taus = [stats.kendalltau(vectors[i], vectors[j]).statistic for i, j in pairs]
    rhos = [stats.spearmanr(vectors[i], vectors[j]).statistic for i, j in pairs]
    tops = [{3, 1}, {3, 2}, {4, 0}]  # top-2 of each vector
    jaccard = [len(tops[i] & tops[j]) / len(tops[i] | tops[j]) for i, j in pairs]
    assert result["kendall_tau_mean"] == pytest.approx(sum(taus) / 3)
    assert result["spearman_rho_mean"] == pytest.approx(sum(rhos) / 3)
    assert result["topk_jaccard_mean"] == pytest.approx(sum(jaccard) / 3)
    mean = sum(taus) / 3
    assert result["kendall_tau_std"] == pytest.approx((sum((t - mean) ** 2 for t in taus) / 3) ** 0.5)
    assert ranking_stability(vectors)["k"] == 3  # default: half the blocks, rounded up


def test_constant_vectors_are_undefined_not_crashes():
    result = ranking_stability([[1.0, 1.0, 1.0], [0.1, 0.5, 0.3], [0.2, 0.4, 0.9]], k=1)
    assert result["undefined_pairs"] == 2 and result["n_pairs"] == 3
    assert result["kendall_tau_mean"] == pytest.approx(stats.kendalltau([0.1, 0.5, 0.3], [0.2, 0.4, 0.9]).statistic)


def test_bad_input():
    with pytest.raises(ValueError, match="at least 2 rankings"):
        ranking_stability([[1.0, 2.0]])
    with pytest.raises(ValueError, match=r"same blocks; got lengths \[2, 3\]"):
        ranking_stability([[1.0, 2.0], [1.0, 2.0, 3.0]])
    with pytest.raises(ValueError, match=r"scores_list\[1\]\[\d\] is nan"):
        ranking_stability([[1.0, 2.0], [float("nan"), 2.0]])
    with pytest.raises(ValueError, match="k must be an int between 1 and the number of blocks"):
        ranking_stability([[1.0, 2.0], [2.0, 1.0]], k=3)
    with pytest.raises(TypeError, match="list of score vectors"):
        ranking_stability("12")


def test_study_on_builtin_sentences(tmp_path):
    minilm_path()
    summary = stability_study(seeds=2, samples=6, batch_size=3, max_seq_len=24, out_dir=tmp_path, progress=False)
    result = summary["tasks"]["builtin"]
    assert len(result["activation_scores"]) == 2 and len(result["activation_scores"][0]) == 6
    assert result["activation_scores"][0] != result["activation_scores"][1]  # the seed draws other sentences
    assert result["gradient_scores"][0] != result["gradient_scores"][1]
    assert -1.0 <= result["activation_vs_gradient"]["kendall_tau"] <= 1.0
    assert "builtin" in summary["table"] and "act~grad" in summary["table"]
    assert sorted(os.listdir(tmp_path)) == ["stability.json", "stability.png", "stability.txt"]
    assert json.loads((tmp_path / "stability.json").read_text())["seeds"] == 2
    assert (tmp_path / "stability.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.skipif(not os.path.isdir(GLUE), reason="GLUE data folder not available")
def test_stability_command_on_glue(tmp_path, capsys):
    minilm_path()
    assert main(["stability", "--data-dir", GLUE, "--tasks", "rte,stsb", "--seeds", "2", "--samples", "4",
                 "--batch-size", "4", "--max-seq-len", "32", "--out", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "rte " in out and "stsb " in out and "tasks " in out  # two tasks: a cross-task row too
    summary = json.loads((tmp_path / "stability.json").read_text())
    assert set(summary["tasks"]) == {"rte", "stsb"} and "across_tasks" in summary
    assert main(["stability", "--data-dir", str(tmp_path / "none"), "--seeds", "2"]) == 2
    assert "GLUE data directory not found" in capsys.readouterr().err


def test_kendall_tau_ci_is_the_jackknife_over_rankings():
    import itertools
    import math

    vectors = [[0.2, 1.3, 0.7, 2.9, 1.1], [0.3, 0.9, 1.4, 2.5, 0.8], [1.9, 0.2, 0.6, 1.0, 2.4], [0.1, 1.0, 0.9, 3.0, 1.2]]
    result = ranking_stability(vectors, k=2)
    tau = {(i, j): stats.kendalltau(vectors[i], vectors[j]).statistic
           for i, j in itertools.combinations(range(4), 2)}
    full = sum(tau.values()) / len(tau)
    loo = [sum(v for p, v in tau.items() if m not in p) / 3 for m in range(4)]
    mean_loo = sum(loo) / 4
    se = math.sqrt(3 / 4 * sum((x - mean_loo) ** 2 for x in loo))
    half = stats.t.ppf(0.975, 3) * se
    assert result["kendall_tau_ci95"] == pytest.approx([max(-1.0, full - half), min(1.0, full + half)])  # τ range
    same = ranking_stability([[1.0, 2.0, 3.0]] * 3)
    assert same["kendall_tau_ci95"] == pytest.approx([1.0, 1.0])
    two = ranking_stability([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    assert all(x != x for x in two["kendall_tau_ci95"])  # NaN: a jackknife needs 3 rankings


def test_study_varies_sample_and_head_separately(tmp_path):
    minilm_path()
    summary = stability_study(seeds=3, samples=6, batch_size=3, max_seq_len=24, head_warmup_steps=2,
                              progress=False)
    result = summary["tasks"]["builtin"]
    # the head experiment keeps seed 0's sample: its first ranking equals the sample experiment's first
    assert result["gradient_head_scores"][0] == pytest.approx(result["gradient_scores"][0])
    assert result["gradient_head_scores"][1] != result["gradient_head_scores"][0]  # another head
    assert len(result["gradient_head"]["kendall_tau_ci95"]) == 2 and summary["head_warmup_steps"] == 2
    assert "grad tau (head)" in summary["table"] and "jackknife" in summary["table"]
