import json
import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import act_lora_fast as A
from act_lora_fast import select_layers
from act_lora_fast.measure import cost as cost_module
from act_lora_fast.measure.cost import (CostModel, calibrate_cost_model, default_calibration, estimate_cost,
                                select_within_budget)
from act_lora_fast.measure.harness import BenchSettings, synthetic_batch


from tests.models import tiny_bert

pytestmark = pytest.mark.usefixtures("one_thread")


def formula(layers, coefs, adapter_w, depth_w):
    """The cost model's form written out independently: c0 + ca·Σ_S a_i + cd·Σ_{i≥min S} d_i."""
    a = np.asarray(adapter_w) / np.mean(adapter_w)
    d = np.asarray(depth_w) / np.mean(depth_w)
    return coefs[0] + coefs[1] * a[sorted(layers)].sum() + coefs[2] * d[min(layers):].sum()


def test_fit_recovers_the_coefficients_and_predicts_unseen_selections():
    rng = np.random.default_rng(0)
    n = 7
    adapter_w, depth_w = rng.uniform(0.5, 2.0, n), rng.uniform(0.5, 2.0, n)
    truth = {"step_ms": [37.0, 5.5, 11.25], "memory_bytes": [1.5e8, 2.0e6, 3.3e7]}
    model = CostModel(num_blocks=n, adapter_weights=list(adapter_w), depth_weights=list(depth_w))
    calibration = default_calibration(n)
    points = [{"layers": s, **{t: formula(s, c, adapter_w, depth_w) for t, c in truth.items()}}
              for s in calibration]
    model.fit(points)
    for target, coefs in truth.items():
        np.testing.assert_allclose(model.coefficients[target], coefs, rtol=1e-6)
    for layers in ([2, 4], [1, 3, 6], [0, 5], [6], list(range(1, n))):
        predicted = model.predict(layers)
        for target, coefs in truth.items():
            assert predicted[target] == pytest.approx(formula(layers, coefs, adapter_w, depth_w), rel=1e-6)
    report = model.validate([{"layers": [2, 4], "step_ms": formula([2, 4], truth["step_ms"], adapter_w, depth_w)
                              * 1.1}])
    assert report["points"][0]["step_ms"]["error"] == pytest.approx(1 / 1.1 - 1)
    assert report["max_abs_error"]["step_ms"] == pytest.approx(1 - 1 / 1.1)
    assert np.isnan(report["max_abs_error"]["memory_bytes"])  # no memory measured in those points


def test_fit_keeps_costs_non_negative_under_noise():
    rng = np.random.default_rng(1)
    n = 6
    points = []
    for _ in range(12):
        layers = sorted(rng.choice(n, size=rng.integers(1, n + 1), replace=False).tolist())
        # the true adapter cost is 0; noise would make unconstrained least squares go negative
        points.append({"layers": layers, "step_ms": 50.0 + 8.0 * (n - min(layers)) + rng.normal(0, 3.0)})
    model = CostModel(num_blocks=n).fit(points)
    assert all(c >= 0 for c in model.coefficients["step_ms"])
    assert model.coefficients["step_ms"][2] == pytest.approx(8.0, abs=1.5)


def test_default_calibration():
    assert default_calibration(6) == [[5], [0], [0, 1, 2, 3, 4, 5], [3, 4, 5]]
    assert default_calibration(5) == [[4], [0], [0, 1, 2, 3, 4], [2, 3, 4]]
    assert default_calibration(1) == [[0]]
    with pytest.raises(ValueError, match="num_blocks"):
        default_calibration(0)


def test_from_model_uses_lora_and_block_sizes():
    model = tiny_bert(layers=4)
    cost_model = CostModel.from_model(model)
    assert cost_model.num_blocks == 4
    assert cost_model.adapter_weights == [1.0] * 4 and cost_model.depth_weights == [1.0] * 4
    np.testing.assert_allclose(cost_model.features([2, 1]), [1.0, 2.0, 3.0])
    np.testing.assert_allclose(cost_model.features([3]), [1.0, 1.0, 1.0])


def _hand_model(n, step, memory):
    return CostModel(num_blocks=n, coefficients={"step_ms": step, "memory_bytes": memory})


def test_budget_prefers_cheap_deep_blocks_over_a_costly_shallow_one():
    # backward depth is the expensive part: block 0 alone costs the whole stack's backward
    model = _hand_model(6, [100.0, 10.0, 30.0], [1e6, 1e5, 4e5])
    scores = [9.0, 1.0, 2.0, 3.0, 8.0, 7.0]
    # block 0 alone: 100 + 10 + 180 = 290 ms > 200; blocks 4, 5: 100 + 20 + 60 = 180 ms; + block 3: 220 ms
    assert select_within_budget(scores, model, budget_ms=200) == [4, 5]
    assert select_layers(scores, budget_ms=200, cost_model=model) == [4, 5]
    assert select_within_budget(scores, model, budget_ms=1000) == [0, 1, 2, 3, 4, 5]
    # memory: {4, 5} = 1e6 + 2e5 + 8e5 = 2.0e6; adding 3 gives 1e6 + 3e5 + 1.2e6 = 2.5e6
    assert select_within_budget(scores, model, budget_bytes=2.4e6) == [4, 5]
    assert select_within_budget(scores, model, budget_bytes=2.5e6) == [3, 4, 5]
    assert select_within_budget(scores, model, budget_ms=200, budget_bytes=2.5e6) == [4, 5]


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.integers(2, 9), st.data())
def test_budget_selection_fits_and_is_maximal(n, data):
    coefs = data.draw(st.lists(st.floats(0.0, 50.0, allow_subnormal=False), min_size=3, max_size=3))
    coefs[0] += 1.0
    scores = data.draw(st.lists(st.floats(-5, 5, allow_nan=False), min_size=n, max_size=n))
    model = _hand_model(n, coefs, [1.0, 1.0, 1.0])
    budget = data.draw(st.floats(1.0, 600.0))
    try:
        chosen = select_within_budget(scores, model, budget_ms=budget)
    except ValueError as err:
        assert "no block fits" in str(err)
        assert all(model.predict([i])["step_ms"] > budget for i in range(n))
        return
    assert chosen == sorted(set(chosen))
    assert model.predict(chosen)["step_ms"] <= budget
    for other in set(range(n)) - set(chosen):  # adding anything else would break the budget
        assert model.predict(chosen + [other])["step_ms"] > budget
    fitting_alone = [i for i in sorted(range(n), key=lambda i: (-scores[i], i))
                     if model.predict([i])["step_ms"] <= budget]
    assert fitting_alone[0] in chosen  # the best block that fits at all is always taken


def test_budget_errors():
    model = _hand_model(3, [10.0, 1.0, 1.0], [5.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="budget_ms and/or budget_bytes"):
        select_within_budget([1, 2, 3], model)
    with pytest.raises(ValueError, match="positive"):
        select_within_budget([1, 2, 3], model, budget_ms=-3)
    with pytest.raises(ValueError, match="3 scores|2 scores"):
        select_within_budget([1, 2], model, budget_ms=100)
    with pytest.raises(ValueError, match=r"no block fits the budget.*block 2.*step_ms 12 > 5"):
        select_within_budget([1, 2, 3], model, budget_ms=5)
    with pytest.raises(TypeError, match="CostModel"):
        select_within_budget([1, 2, 3], "model", budget_ms=5)
    with pytest.raises(ValueError, match="finite"):
        select_within_budget([1, float("nan"), 3], model, budget_ms=50)
    time_only = CostModel(num_blocks=3, coefficients={"step_ms": [1.0, 1.0, 1.0]})
    with pytest.raises(ValueError, match="does not predict memory_bytes"):
        select_within_budget([1, 2, 3], time_only, budget_bytes=100)
    with pytest.raises(RuntimeError, match="not calibrated"):
        CostModel(num_blocks=3).predict([0])
    with pytest.raises(ValueError, match="block index 3 does not exist"):
        model.predict([3])
    with pytest.raises(ValueError, match="adapter_weights"):
        CostModel(num_blocks=2, adapter_weights=[1.0])


def test_save_load_round_trip_and_bad_files(tmp_path):
    model = _hand_model(4, [3.0, 2.0, 1.0], [4e6, 2e5, 1e5])
    model.meta = {"device": "cpu", "batch_shape": [3, 11]}
    path = tmp_path / "cost.json"
    model.save(path)
    assert os.listdir(tmp_path) == ["cost.json"]  # the temp file was renamed into place
    loaded = CostModel.load(path)
    assert loaded == model
    assert loaded.predict([1, 3]) == model.predict([1, 3])
    with pytest.raises(FileNotFoundError, match="missing.json"):
        CostModel.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"num_blocks": 2,\n oops}')
    with pytest.raises(ValueError, match="line 2"):
        CostModel.load(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"format": "something else", "num_blocks": 2}))
    with pytest.raises(ValueError, match="not a cost model"):
        CostModel.load(tmp_path / "other.json")


def test_calibrated_memory_predictions_hold_on_unseen_selections():
    """Memory on CPU is accounted exactly, so the model's form (not timing noise) is what is checked."""
    model = tiny_bert(layers=4, seed=3)
    batch = synthetic_batch(model, 3, 13)
    bench = BenchSettings(steps=1, warmup_steps=1)
    cost_model = calibrate_cost_model(model, batch=batch, settings=bench, rounds=1, progress=False)
    assert [p["layers"] for p in cost_model.calibration] == default_calibration(4)
    assert cost_model.meta["batch_shape"] == [3, 13]
    unseen = [[1, 2], [0, 2], [1, 3], [0, 1, 2]]
    from act_lora_fast.measure.harness import Variant, measure_variants

    measured = measure_variants(model, [Variant(tuple(s)) for s in unseen], batch, bench, rounds=1,
                                progress=False)
    for variant, result in measured.items():
        predicted = estimate_cost(model, list(variant.layers), cost_model=cost_model)
        assert set(predicted) == {"step_ms", "forward_ms", "backward_ms", "optimizer_ms", "memory_bytes"}
        assert predicted["memory_bytes"] == pytest.approx(result["memory_bytes"], rel=0.10)
    with pytest.raises(ValueError, match="calibrated for 4 blocks"):
        estimate_cost(tiny_bert(layers=2), [0], cost_model=cost_model)
    with pytest.raises(ValueError, match="unused"):
        estimate_cost(model, [0], cost_model=cost_model, rounds=3)


# ---------------------------------------------------------------------------------------------- bad input
IDS = torch.randint(0, 97, (2, 5), generator=torch.Generator().manual_seed(0))
BATCH = {"input_ids": IDS, "attention_mask": torch.ones_like(IDS), "labels": torch.tensor([0, 1])}


@pytest.mark.parametrize("fields, error, match", [
    ({"adapter_weights": "abc"}, TypeError, "adapter_weights must be a list of 3 numbers"),
    ({"depth_weights": 5}, TypeError, "depth_weights must be a list of 3 numbers"),
    ({"coefficients": [1, 2]}, TypeError, "coefficients must be a dict"),
    ({"coefficients": {"step_ms": 5}}, ValueError, "coefficients must map targets"),
    ({"coefficients": {"step_ms": ["a", "b", "c"]}}, ValueError, "coefficients must map targets"),
])
def test_cost_model_fields(fields, error, match):
    with pytest.raises(error, match=match):
        A.CostModel(3, **fields)


def test_cost_model_files(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a directory; expected a cost model JSON file"):
        A.CostModel.load(tmp_path)
    with pytest.raises(TypeError, match="path must be a file path"):
        A.CostModel.load(None)
    (tmp_path / "cm.json").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ValueError, match=r"cm\.json: not UTF-8 text"):
        A.CostModel.load(tmp_path / "cm.json")
    (tmp_path / "coef.json").write_text(json.dumps({"num_blocks": 3, "coefficients": [1]}))
    with pytest.raises(TypeError, match=r"coef\.json: coefficients must be a dict"):
        A.CostModel.load(tmp_path / "coef.json")
    with pytest.raises(IsADirectoryError, match="is a directory; expected a file path"):
        A.CostModel(3).save(tmp_path)


@pytest.mark.parametrize("method, points, error, match", [
    ("fit", {"layers": [0]}, TypeError, "points must be a list of dicts"),
    ("fit", [{"layers": [0], "step_ms": "x"}], TypeError, "calibration point 0: step_ms must be a number"),
    ("validate", [[0]], TypeError, "calibration point 0 must be a dict"),
])
def test_cost_model_points(method, points, error, match):
    model = A.CostModel(3).fit([{"layers": [0], "step_ms": 10}, {"layers": [2], "step_ms": 5}])
    with pytest.raises(error, match=match):
        getattr(model, method)(points)


def test_estimate_cost_checks_layers_before_calibrating(monkeypatch):
    def calibrate(*args, **kwargs):
        raise AssertionError("calibrated before checking layers")

    monkeypatch.setattr(cost_module, "calibrate_cost_model", calibrate)
    with pytest.raises(ValueError, match="block index 99 does not exist"):
        A.estimate_cost(tiny_bert().eval(), [99])


@pytest.mark.parametrize("kwargs, error, match", [
    ({"settings": {"r": 4}}, TypeError, "settings must be a BenchSettings, got dict"),
    ({"batch": [BATCH]}, TypeError, "batch must be a dict of tensors"),
    ({"batch": {"input_ids": IDS}}, ValueError, "batch needs a 'labels' tensor"),
    ({"batch": {"input_ids": IDS[0], "labels": BATCH["labels"]}}, ValueError,
     r"batch\['input_ids'\] must be a non-empty \(batch, sequence\) integer tensor"),
])
def test_calibrate_cost_model_checks_settings_and_batch(kwargs, error, match):
    with pytest.raises(error, match=match):
        A.calibrate_cost_model(tiny_bert().eval(), progress=False, rounds=1, **kwargs)
