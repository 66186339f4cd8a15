import json
import os

import numpy as np
import pytest
import torch
from scipy import stats

import act_lora_fast as A
from act_lora_fast.cli import main as cli_main
from act_lora_fast.measure import vs_peft as vs_peft_module
from act_lora_fast.measure.cost import CostModel
from act_lora_fast.measure.harness import (BenchSettings, Variant, build_variant, measure_training_steps,
                                          synthetic_batch)
from act_lora_fast.measure.report import write_scaling
from act_lora_fast.measure.scaling import ScalingConfig, fit_linear, placement_layers, run_scaling
from act_lora_fast.measure.vs_peft import compare_with_peft

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


from tests.models import tiny_bert

pytestmark = pytest.mark.usefixtures("one_thread")


def test_fit_linear_exact_noisy_and_constant():
    ks = np.arange(1, 8)
    fit = fit_linear(ks, 3.5 * ks + 11.0)
    assert fit["slope"] == pytest.approx(3.5) and fit["intercept"] == pytest.approx(11.0)
    assert fit["r2"] == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    y = 2.0 * ks + rng.normal(0, 1.5, ks.size)
    fit = fit_linear(ks.tolist(), y.tolist())
    assert fit["r2"] == pytest.approx(stats.pearsonr(ks, y)[0] ** 2)
    assert 0 < fit["r2"] < 1
    quadratic = fit_linear(ks, (ks - 4.0) ** 2)
    assert quadratic["r2"] == pytest.approx(0.0, abs=1e-12)  # symmetric: no linear trend at all
    assert fit_linear([1, 2, 3], [5.0, 5.0, 5.0]) == {"slope": 0.0, "intercept": 5.0, "r2": 1.0}
    with pytest.raises(ValueError, match="equal length"):
        fit_linear([1, 2, 3], [1.0, 2.0])
    with pytest.raises(ValueError, match="two distinct"):
        fit_linear([2, 2], [1.0, 3.0])
    with pytest.raises(ValueError, match="finite"):
        fit_linear([1, 2], [1.0, float("nan")])


def test_placements():
    assert placement_layers("top", 2, 5) == [3, 4]
    assert placement_layers("bottom", 3, 5) == [0, 1, 2]
    assert placement_layers("ranked", 3, 5, ranking=[4, 0, 2, 1, 3]) == [0, 2, 4]
    with pytest.raises(ValueError, match="needs a ranking"):
        placement_layers("ranked", 1, 5)
    with pytest.raises(ValueError, match="unknown placement"):
        placement_layers("middle", 1, 5)
    with pytest.raises(ValueError, match="k must be"):
        placement_layers("top", 6, 5)


def test_peft_and_act_lora_variants_train_the_same_parameters():
    base = tiny_bert(layers=4)
    settings = BenchSettings()
    ours = build_variant(base, Variant((1, 3)), settings)
    peft = build_variant(base, Variant((1, 3), "peft"), settings)
    ours_lora = {n.replace(".lora_A.weight", "") for n, p in ours.named_parameters()
                 if p.requires_grad and "lora_A" in n}
    peft_lora = {n.replace("base_model.model.", "").replace(".lora_A.default.weight", "")
                 for n, p in peft.named_parameters() if p.requires_grad and "lora_A" in n}
    assert ours_lora == peft_lora
    assert len(ours_lora) == 2 * 6  # query, key, value, attention.output.dense, intermediate, output
    assert {name.split(".")[3] for name in ours_lora} == {"1", "3"}
    count = lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad)  # noqa: E731
    assert count(ours) == count(peft) == 2 * 8 * (4 * (24 + 24) + (24 + 40) + (40 + 24)) + 24 * 2 + 2
    assert all(not isinstance(m, type(ours.bert.encoder.layer[1].attention.self.query))
               for m in base.modules())  # the base model was copied, not modified


def test_floor_runs_backward_down_to_the_lowest_selected_block():
    base = tiny_bert(layers=4, seed=5)
    batch = synthetic_batch(base, 2, 9)
    settings = BenchSettings(steps=1, warmup_steps=0)
    saved = {}
    for layers in ((3,), (1,), (0, 2)):
        model = build_variant(base, Variant(layers, "floor"), settings)
        assert [n for n, p in model.named_parameters() if p.requires_grad] == ["classifier.weight",
                                                                                "classifier.bias"]
        saved[layers] = measure_training_steps(model, batch, settings, "cpu")["saved_for_backward_bytes"]
    # activations kept for backward grow with the depth the backward pass reaches: 1, 3, then 4 blocks
    assert saved[(3,)] < saved[(1,)] < saved[(0, 2)]
    assert saved[(1,)] - saved[(3,)] == pytest.approx(2 * (saved[(0, 2)] - saved[(1,)]), rel=0.01)


def test_adapter_bytes_are_weights_grads_and_adamw_moments():
    model = build_variant(tiny_bert(), Variant((0, 2)), BenchSettings(steps=1, warmup_steps=0))
    params = [p for p in model.parameters() if p.requires_grad]
    batch = synthetic_batch(model, 2, 9)
    summary = measure_training_steps(model, batch, BenchSettings(steps=2, warmup_steps=1), "cpu")
    trainable = sum(p.numel() * 4 for p in params)
    # weight + grad + exp_avg + exp_avg_sq, and AdamW's scalar step counter per tensor
    assert summary["adapter_bytes"] == 4 * trainable + 4 * len(params)
    assert summary["trainable_parameters"] == trainable // 4
    assert summary["memory_bytes"] == summary["memory"]["peak_backward_bytes"] > summary["adapter_bytes"]
    assert summary["steps"] == 2


def test_run_scaling_schema_fits_and_plots(tmp_path):
    model = tiny_bert(layers=4, seed=1)
    config = ScalingConfig(batch_size=3, seq_len=11, rounds=1, progress=False,
                           settings=BenchSettings(steps=1, warmup_steps=1))
    results = run_scaling(config, model=model, ranking=[2, 0, 3, 1])
    assert results["num_blocks"] == 4 and results["batch_size"] == 3 and results["seq_len"] == 11
    for name, entry in results["placements"].items():
        assert entry["k"] == [1, 2, 3, 4]
        for key in ("forward_ms", "backward_ms", "optimizer_ms", "step_ms", "memory_bytes", "adapter_bytes"):
            assert len(entry[key]) == 4 and all(v > 0 for v in entry[key])
        np.testing.assert_allclose(entry["step_ms"], np.sum([entry["forward_ms"], entry["backward_ms"],
                                                             entry["optimizer_ms"]], axis=0), rtol=0.35)
        for fit in ("time_fit", "memory_fit", "adapter_memory_fit"):
            assert set(entry[fit]) == {"slope", "intercept", "r2"}
        assert entry["adapter_memory_fit"]["r2"] > 0.9999  # identical blocks: exactly linear
        assert entry["adapter_memory_fit"]["slope"] > 0
    assert results["placements"]["ranked"]["layers"] == [[2], [0, 2], [0, 2, 3], [0, 1, 2, 3]]
    for contiguous in ("top", "bottom"):  # total memory is linear in k when the placement is contiguous
        assert results["placements"][contiguous]["memory_fit"]["r2"] >= 0.98
    top, bottom = results["placements"]["top"], results["placements"]["bottom"]
    # the bottom block alone keeps every block's activations for backward; the top block only its own
    assert bottom["memory_bytes"][0] > top["memory_bytes"][0]
    assert top["memory_fit"]["slope"] > bottom["memory_fit"]["slope"]
    assert results["cost_validation"]["max_abs_error"]["memory_bytes"] <= 0.10
    assert {"bottom1_over_all", "top1_over_all", "adapter_ms_per_block"} <= set(results["analysis"])

    paths = write_scaling(results, tmp_path)
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "scaling.json").stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    assert json.loads((tmp_path / "scaling.json").read_text())["placements"]["top"]["k"] == [1, 2, 3, 4]
    for png in ("scaling_time.png", "scaling_memory.png"):
        assert (tmp_path / png).read_bytes()[:8] == PNG_MAGIC
    assert len(paths) == 3


def test_cli_bench_scaling_on_a_saved_model(tmp_path, capsys):
    model_dir = tmp_path / "tiny"
    tiny_bert(layers=3, seed=2).save_pretrained(model_dir)  # no tokenizer: ranking uses a random batch
    out = tmp_path / "out"
    code = cli_main(["bench-scaling", "--model", str(model_dir), "--out", str(out), "--batch-size", "2",
                     "--seq-len", "7", "--rounds", "1", "--steps", "1", "--placements", "top", "bottom",
                     "--clock", "process", "--threads", "1", "--no-progress"])
    assert code == 0
    data = json.loads((out / "scaling.json").read_text())
    assert set(data["placements"]) == {"top", "bottom"}
    assert data["model"] == str(model_dir) and data["clock"] == "process" and data["threads"] == 1
    assert data["placements"]["bottom"]["layers"] == [[0], [0, 1], [0, 1, 2]]
    assert CostModel.load(out / "cost_model.json").num_blocks == 3
    assert (out / "scaling_memory.png").read_bytes()[:8] == PNG_MAGIC
    printed = capsys.readouterr().out
    assert "| top | 1 | [2] |" in printed and "scaling.json" in printed
    assert cli_main(["bench-scaling", "--model", str(tmp_path / "nope"), "--out", str(out), "--no-progress"]) == 2
    assert "model folder not found" in capsys.readouterr().err


def test_compare_with_peft_reports_both_sides():
    model = tiny_bert(layers=4, seed=4)
    batch = synthetic_batch(model, 2, 9)
    result = compare_with_peft(model, batch, BenchSettings(steps=1, warmup_steps=1), ranking=[3, 1, 0, 2],
                               rounds=1, extra_selections=[[0]], progress=False)
    assert result["part_layers"] == [1, 3]
    pairs = {(row["implementation"], tuple(row["layers"])): row for row in result["rows"]}
    assert set(pairs) == {(impl, layers) for impl in ("act_lora", "peft")
                          for layers in ((0, 1, 2, 3), (1, 3), (0,))} | {("floor", (0, 1, 2, 3))}
    assert pairs[("floor", (0, 1, 2, 3))]["trainable_parameters"] == 24 * 2 + 2  # the head only
    for layers in ((0, 1, 2, 3), (1, 3), (0,)):
        assert pairs[("act_lora", layers)]["trainable_parameters"] == pairs[("peft", layers)]["trainable_parameters"]
    ratios = result["ratios"]
    assert ratios["speedup_all"] == pytest.approx(pairs[("peft", (0, 1, 2, 3))]["step_ms"]
                                                  / pairs[("act_lora", (0, 1, 2, 3))]["step_ms"])
    assert ratios["memory_all"] == pytest.approx(pairs[("act_lora", (0, 1, 2, 3))]["memory_bytes"]
                                                 / pairs[("peft", (0, 1, 2, 3))]["memory_bytes"])
    assert set(result["depth_ratios"]) == {"act_lora:0_over_all", "peft:0_over_all"}


def test_bad_configs():
    with pytest.raises(ValueError, match="placements"):
        ScalingConfig(placements=("top", "sideways"))
    with pytest.raises(ValueError, match="two distinct"):
        ScalingConfig(ks=(2, 2))
    with pytest.raises(ValueError, match="steps"):
        BenchSettings(steps=0)
    with pytest.raises(ValueError, match="clock"):
        BenchSettings(clock="cycles")
    with pytest.raises(ValueError, match="seq_len"):
        synthetic_batch(tiny_bert(), 2, 40)  # beyond max_position_embeddings
    with pytest.raises(ValueError, match="unknown implementation"):
        build_variant(tiny_bert(), Variant((0,), "loralib"), BenchSettings())


# ---------------------------------------------------------------------------------------------- bad input
IDS = torch.randint(0, 97, (2, 5), generator=torch.Generator().manual_seed(0))
BATCH = {"input_ids": IDS, "attention_mask": torch.ones_like(IDS), "labels": torch.tensor([0, 1])}


@pytest.mark.parametrize("fields, error, match", [
    ({"ks": 5}, TypeError, "ks must be a list of ints"),
    ({"rounds": 0}, ValueError, "rounds must be an int >= 1, got 0"),
    ({"batch_size": 0}, ValueError, "batch_size must be an int >= 1"),
    ({"seq_len": "64"}, TypeError, "seq_len must be an int >= 1"),
    ({"settings": {}}, TypeError, "settings must be a BenchSettings"),
])
def test_scaling_config_fields(fields, error, match):
    with pytest.raises(error, match=match):
        A.ScalingConfig(**fields)


def test_run_scaling_argument_types():
    with pytest.raises(TypeError, match="config must be a ScalingConfig, got str"):
        A.run_scaling("minilm")
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module"):
        A.run_scaling(A.ScalingConfig(placements=("top",), ks=(1, 2)), model="bert")


@pytest.mark.parametrize("batch, kwargs, error, match", [
    (BATCH, {"fraction": "0.5"}, TypeError, r"fraction must be a number, got '0.5'"),
    (BATCH, {"ranking": [0, 0, 1]}, ValueError, "ranking must be a permutation of the blocks 0..2"),
    (BATCH, {"settings": {"r": 4}}, TypeError, "settings must be a BenchSettings"),
    ([BATCH], {}, TypeError, "batch must be a dict of tensors"),
])
def test_compare_with_peft_checks_before_measuring(monkeypatch, batch, kwargs, error, match):
    def measure(*args, **kw):
        raise AssertionError("measured before checking the arguments")

    # vs_peft imports measure_variants by name: patch the name it calls (patching harness would not catch a
    # check that moved after the measurement)
    monkeypatch.setattr(vs_peft_module, "measure_variants", measure)
    with pytest.raises(error, match=match):
        A.compare_with_peft(tiny_bert().eval(), batch, **{"ranking": [0, 1, 2], "progress": False, **kwargs})


def test_table_says_when_no_unseen_selection_validated_the_cost_model():
    from act_lora_fast.measure.report import format_table

    base = {"model": "m", "device": "cpu", "placements": {}, "cost_validation": {
        "points": [], "max_abs_error": {"step_ms": float("nan"), "memory_bytes": float("nan")}}}
    text = format_table(base)
    assert "none measured" in text and "nan" not in text
    base["cost_validation"] = {"points": [{"layers": [0]}],
                               "max_abs_error": {"step_ms": 0.031, "memory_bytes": -0.002}}
    assert "max |error| step time 3.1%, memory -0.2%" in format_table(base)
