"""`compare` over seeds: the matrix, the baselines, the statistics, the timing phase, compare.json's schema,
the CLI, and a decoder (a tiny random LlamaForSequenceClassification)."""
import json

import pytest
import torch

from act_lora_fast.cli import main as cli_main
from act_lora_fast.measure.cost import CostModel
from act_lora_fast.measure.stats import paired
from act_lora_fast.method.selection import select_layers
from act_lora_fast.train.compare import (RANDOM_STREAM, VariantSpec, best_within_budget, format_table, run_compare,
                                         summarize, variant_specs)
from act_lora_fast.train.config import TrainConfig
from tests.models import minilm_path

pytestmark = pytest.mark.usefixtures("one_thread")

VARIANT_KEYS = {"name", "layers", "scores", "mean", "std", "ci95", "step_ms", "peak_memory_mib", "lora_parameters"}


def _base(model, data_dir, **overrides):
    values = dict(model=model, data_dir=data_dir, epochs=1, batch_size=16, max_seq_len=24, max_train_samples=48,
                  calibration_samples=32, progress=False, plots=False, save_adapter=False)
    values.update(overrides)
    return TrainConfig(**values)


@pytest.fixture(scope="module")
def matrix(tiny_model, sst2_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    seen = []
    result = run_compare(_base(tiny_model, sst2_dir), fractions=(0.5,),
                         baselines=("gradient", "random", "first", "last", "block_output", "cost_aware"),
                         seeds=2, random_draws=3, gradient_warmup_steps=2, output_dir=str(out),
                         on_run=lambda config, report: seen.append((config.seed, report["variant"])))
    return result, out, seen


def test_compare_json_has_the_issue_schema(matrix):
    result, out, _ = matrix
    saved = json.loads((out / "compare.json").read_text())
    assert saved["task"] == "sst2" and saved["seeds"] == [0, 1]
    assert isinstance(saved["above_chance"], (bool, type(None))) and 0 <= saved["chance_score"] <= 100
    names = [v["name"] for v in saved["variants"]]
    assert names == ["all", "activation@50%", "gradient@50%", "random@50%", "first@50%", "last@50%",
                     "block_output@50%", "cost_aware@50%"]
    for variant in saved["variants"]:
        assert VARIANT_KEYS <= set(variant), variant["name"]
        assert len(variant["scores"]) == 2 and variant["ci95"][0] <= variant["mean"] <= variant["ci95"][1]
        assert variant["step_ms"] > 0 and variant["peak_memory_mib"] > 0
        if variant["name"] == "all":
            assert "delta_vs_all" not in variant and variant["layers"] == [0, 1, 2, 3]
        else:
            assert set(variant["delta_vs_all"]) >= {"mean", "ci95", "p_value"}
    assert saved["status"] == "complete" and saved["completed_runs"] == saved["planned_runs"]
    assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG"
    assert "Δ 95 % CI" in (out / "compare.md").read_text()


def test_paired_statistics_and_last_epoch_scores(matrix):
    result, _, _ = matrix
    by_name = {v["name"]: v for v in result.variants}
    reference = by_name["all"]
    for name in ("activation@50%", "last@50%"):
        variant = by_name[name]
        expected = paired(variant["scores"], reference["scores"])
        assert variant["delta_vs_all"]["mean"] == pytest.approx(expected["mean"])
        assert variant["delta_vs_all"]["ci95"] == pytest.approx(expected["ci95"])
        for run in variant["runs"]:
            assert run["score"] == pytest.approx(run["score"])  # the last epoch's, recorded per run
    row = next(r for r in result.rows if r["variant"] == "last@50%")
    assert row["delta_score"] == pytest.approx(by_name["last@50%"]["delta_vs_all"]["mean"])


def test_random_draws_come_from_their_own_stream(matrix):
    result, _, seen = matrix
    random_variant = next(v for v in result.variants if v["kind"] == "random")
    draws = random_variant["draws"]
    assert len(draws) >= 3 and sorted(d["draw"] for d in draws) == list(range(len(draws)))
    for draw in draws:
        assert draw["layers"] == select_layers([0.0] * 4, fraction=0.5, strategy="random",
                                               seed=RANDOM_STREAM + draw["draw"])
    # one training run per draw (unless an identical run was reused), each paired with all-layer LoRA at the
    # draw's seed; on_run names the variant of every run it trains
    trained = [run for run in random_variant["runs"] if "same_run_as" not in run]
    assert sum(1 for _, variant in seen if variant == random_variant["name"]) == len(trained)
    assert {variant for _, variant in seen} <= {v["name"] for v in result.variants}
    assert len(random_variant["runs"]) == len(draws) and len(random_variant["scores"]) == 2


def test_selections_report_their_margin_and_positional_baselines(matrix):
    result, _, _ = matrix
    by_name = {v["name"]: v for v in result.variants}
    assert by_name["first@50%"]["layers"] == [0, 1] and by_name["last@50%"]["layers"] == [2, 3]
    assert by_name["first@50%"]["score_margin"] is None
    for name in ("activation@50%", "gradient@50%", "block_output@50%"):
        margins = by_name[name]["score_margin"]
        assert len(margins) == 2 and all(m >= 0 for m in margins)  # a top-k set: k-th ≥ (k+1)-th
    profiles = result.meta["profiles"]
    assert {"input_norm@seed0", "gradient_norm@seed1", "block_output@seed0"} <= set(profiles)


def test_timing_comes_from_the_interleaved_phase(matrix):
    result, _, _ = matrix
    timing = result.meta["timing"]
    assert timing["source"] == "interleaved timing phase" and timing["clock"] == "process"
    assert timing["rounds"] == 3 and timing["batch_shape"][0] == 16
    by_name = {v["name"]: v for v in result.variants}
    # identical selections are measured once, so they report one number
    assert by_name["last@50%"]["step_ms"] == by_name["last@50%"]["step_ms"]
    assert by_name["all"]["lora_parameters"] == 2 * by_name["last@50%"]["lora_parameters"]


def test_cost_aware_fits_the_budget_of_activation_selection():
    model = CostModel(num_blocks=6, coefficients={"step_ms": [100.0, 5.0, 20.0]})
    scores = [1.0, 3.0, 2.9, 2.8, 2.7, 2.6]   # flat, as MiniLM's: the top half starts low in the stack
    top_half = select_layers(scores, fraction=0.5)                     # [1, 2, 3]: depth from block 1
    budget = model.predict(top_half)["step_ms"]                        # 100 + 15 + 100 = 215
    chosen = best_within_budget(scores, model, budget)
    assert chosen == [2, 3, 4, 5]  # 100 + 20 + 80 = 200 ≤ 215, total score 11.0 > 8.7
    assert model.predict(chosen)["step_ms"] <= budget
    # greedy with the same budget returns the top-k set itself: no trade possible
    assert model.select_within_budget(scores, budget_ms=budget) == top_half
    assert best_within_budget(scores, model, 1000.0) == list(range(6))
    with pytest.raises(ValueError, match="no block fits"):
        best_within_budget(scores, model, 50.0)


def test_variant_specs_validate():
    specs = variant_specs((0.5,), ("bottom", "cost_aware"), 0.25)
    assert [s.name for s in specs] == ["all", "activation@50%", "bottom@25%", "cost_aware@25%"]
    assert VariantSpec("all").name == "all"
    with pytest.raises(ValueError, match="unknown baseline|baseline must be one of"):
        variant_specs(baselines=("middle",))
    with pytest.raises(ValueError, match="fractions must be in"):
        variant_specs(fractions=(0.0,))
    with pytest.raises(TypeError, match="fractions must be a list"):
        variant_specs(fractions=0.5)


def test_run_compare_checks_its_arguments(tiny_model):
    base = TrainConfig(model=tiny_model, progress=False)
    with pytest.raises(TypeError, match="seeds must be"):
        run_compare(base, seeds="3")
    with pytest.raises(ValueError, match="seeds must be distinct"):
        run_compare(base, seeds=[1, 1])
    with pytest.raises(ValueError, match="unknown metric"):
        run_compare(base, metric="weight_norm")
    with pytest.raises(ValueError, match="random_draws must be"):
        run_compare(base, random_draws=0)
    with pytest.raises(TypeError, match="timing must be"):
        run_compare(base, timing="fast")


def test_summary_leaves_out_tasks_at_chance(matrix):
    result, _, _ = matrix
    import copy

    at_chance = copy.copy(result)
    at_chance.task, at_chance.above_chance = "cola", False
    above = copy.copy(result)
    above.above_chance = True
    average = summarize([above, at_chance])
    assert average.meta["excluded_tasks"] == ["cola"] and "left out: cola" in average.task
    by_variant = {row["variant"]: row for row in average.rows}
    assert by_variant["all"]["score"] == pytest.approx(result.variants[0]["mean"])
    assert "GLUE average" in format_table(average.rows, title=average.task)
    with pytest.raises(ValueError, match="at chance"):
        summarize([at_chance])


def test_cli_compare_with_seeds(tiny_model, sst2_dir, tmp_path, capsys):
    code = cli_main(["compare", "--model", tiny_model, "--task", "sst2", "--data-dir", sst2_dir, "--seeds", "2",
                     "--fractions", "0.5", "--baselines", "last", "--epochs", "1", "--batch-size", "16",
                     "--max-seq-len", "24", "--max-train-samples", "32", "--calibration-samples", "16",
                     "--timing-rounds", "1", "--timing-steps", "1", "--clock", "wall", "--no-progress",
                     "--no-plots", "--no-save-adapter", "--output-dir", str(tmp_path)])
    assert code == 0
    saved = json.loads((tmp_path / "compare.json").read_text())
    assert saved["seeds"] == [0, 1] and saved["timing"]["clock"] == "wall"
    assert [v["name"] for v in saved["variants"]] == ["all", "activation@50%", "last@50%"]
    assert "seed 1" in capsys.readouterr().out


def write_tiny_llama(folder, tokenizer_source, layers=2):
    """A random LlamaForSequenceClassification (hidden 32) with `tokenizer_source`'s tokenizer, saved."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=48,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id, num_labels=2)
    LlamaForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_a_decoder_goes_through_compare(tmp_path, sst2_dir):

    model = write_tiny_llama(tmp_path / "llama", minilm_path())
    result = run_compare(_base(model, sst2_dir, max_train_samples=32, calibration_samples=16), fractions=(0.5,),
                         baselines=("gradient", "last"), seeds=2, gradient_warmup_steps=1,
                         timing=__import__("act_lora_fast.measure.timing", fromlist=["x"]).TimingSettings(
                             rounds=1, steps=1))
    by_name = {v["name"]: v for v in result.variants}
    assert by_name["all"]["layers"] == [0, 1] and len(by_name["activation@50%"]["layers"]) in (1, 2)
    assert by_name["last@50%"]["layers"] == [1] and by_name["gradient@50%"]["lora_parameters"] > 0
    assert all(len(v["scores"]) == 2 for v in result.variants)


def test_compare_offers_the_update_metric(tiny_model, sst2_dir, tmp_path):
    assert cli_main(["compare", "--model", tiny_model, "--task", "sst2", "--data-dir", sst2_dir, "--metric", "update",
                     "--fractions", "0.5", "--baselines", "", "--max-train-samples", "32", "--no-progress",
                     "--no-timing", "--epochs", "1", "--output-dir", str(tmp_path)]) == 0
    variants = json.loads((tmp_path / "compare.json").read_text())["variants"]
    assert [v["name"] for v in variants] == ["all", "activation@50%"]


def test_train_takes_the_activation_metric_and_the_gradient_warm_up(tiny_model, sst2_dir):
    from act_lora_fast.train.loop import train

    report = train(_base(tiny_model, sst2_dir, max_train_samples=32, fraction=0.5, metric="input_rms")).report
    assert report["layer_scores"]["metric"] == "input_rms"
    report = train(_base(tiny_model, sst2_dir, max_train_samples=32, selection="gradient", fraction=0.5,
                         gradient_warmup_steps=2)).report
    assert report["layer_scores"]["metric"] == "gradient_norm"
    fixed = train(_base(tiny_model, sst2_dir, max_train_samples=32, selection="fixed", layers=[3, 1])).report
    assert fixed["selected_layers"] == [1, 3] and fixed["selection_label"] == "fixed:1,3"
    with pytest.raises(ValueError, match="unknown metric"):
        _base(tiny_model, sst2_dir, metric="weights")
    with pytest.raises(ValueError, match="selection 'fixed' needs layers"):
        _base(tiny_model, sst2_dir, selection="fixed")
    with pytest.raises(ValueError, match="block index 7 does not exist"):
        train(_base(tiny_model, sst2_dir, max_train_samples=32, selection="fixed", layers=[7]))


def test_identical_runs_train_once(tiny_model, sst2_dir):
    calls = []
    # activation@100% puts LoRA on every block, as "all" does (but as selection "fixed"): the very same run
    result = run_compare(_base(tiny_model, sst2_dir, max_train_samples=32), fractions=(1.0,), baselines=(),
                         seeds=[3], timing=False, on_run=lambda config, report: calls.append(config.seed))
    every, top = result.variants
    assert every["layers"] == top["layers"] == [0, 1, 2, 3] and calls == [3]
    assert top["scores"] == every["scores"] and top["runs"][0]["same_run_as"] == "all"
    assert result.meta["completed_runs"] == result.meta["planned_runs"] == 2
    assert result.meta["timing"]["source"].startswith("training runs") and every["step_ms"] > 0


def test_resume_adds_seeds_without_retraining(tiny_model, sst2_dir, tmp_path):
    calls = []
    base = _base(tiny_model, sst2_dir, max_train_samples=32)
    first = run_compare(base, fractions=(0.5,), baselines=("last",), seeds=[0], timing=False,
                        output_dir=str(tmp_path), on_run=lambda c, r: calls.append(c.seed))
    assert calls == [0, 0, 0]
    more = run_compare(base, fractions=(0.5,), baselines=("last",), seeds=[0, 1], timing=False,
                       output_dir=str(tmp_path), resume=True, on_run=lambda c, r: calls.append(c.seed))
    assert calls == [0, 0, 0, 1, 1, 1]  # seed 0 kept, seed 1 trained
    assert [v["scores"][0] for v in more.variants] == [v["scores"][0] for v in first.variants]
    assert all(len(v["scores"]) == 2 for v in more.variants)
    with pytest.raises(ValueError, match="cannot resume .* metric"):
        run_compare(base, fractions=(0.5,), baselines=("last",), seeds=[0], timing=False, metric="input_rms",
                    output_dir=str(tmp_path), resume=True)


@pytest.mark.parametrize("higher_is_better, front", [(True, ["fast", "best"]), (False, ["fast", "lowest"])])
def test_the_pareto_front_follows_the_score_direction(higher_is_better, front):
    from act_lora_fast.train.compare.tables import pareto_front

    rows = [{"variant": "fast", "step_ms": 1.0, "score": 2.0}, {"variant": "best", "step_ms": 3.0, "score": 5.0},
            {"variant": "lowest", "step_ms": 2.0, "score": 1.0}, {"variant": "slow", "step_ms": 4.0, "score": 3.0}]
    assert [row["variant"] for row in pareto_front(rows, higher_is_better=higher_is_better)] == front
