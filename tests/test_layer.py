"""FastActLoRALinear as a module: faithful LoRA (vs PEFT), merge, dropout, norm stats, errors, compile."""
import math

import pytest
import torch
from torch import nn

from act_lora_fast import FastActLoRALinear
from act_lora_fast.functional import BACKEND_ENV_VAR
from act_lora_fast.kernels.reference import update_sums_reference
from tests.numerics import NORM_RTOL, TORCH_RTOL, assert_rel_close

BACKENDS = ["torch", "reference", "triton"]  # triton runs in the interpreter (conftest sets TRITON_INTERPRET)


def make_layer(k_in=48, n_out=40, r=8, bias=True, seed=0, **kwargs):
    torch.manual_seed(seed)
    layer = FastActLoRALinear(nn.Linear(k_in, n_out, bias=bias), r=r, **kwargs)
    nn.init.normal_(layer.lora_B.weight)  # B starts at zero; a non-zero B exercises the whole update
    return layer


def test_wraps_without_copying_and_freezes():
    base = nn.Linear(16, 8)
    layer = FastActLoRALinear(base, r=4)
    assert layer.base_layer is base and layer.base_layer.weight.data_ptr() == base.weight.data_ptr()
    assert not base.weight.requires_grad and not base.bias.requires_grad
    assert layer.lora_A.weight.shape == (4, 16) and layer.lora_B.weight.shape == (8, 4)
    assert torch.count_nonzero(layer.lora_B.weight) == 0 and torch.count_nonzero(layer.lora_A.weight) > 0
    assert sorted(layer.state_dict()) == ["base_layer.bias", "base_layer.weight", "lora_A.weight", "lora_B.weight"]
    assert [n for n, p in layer.named_parameters() if p.requires_grad] == ["lora_A.weight", "lora_B.weight"]


@pytest.mark.parametrize("use_rslora, expected", [(False, 16 / 8), (True, 16 / math.sqrt(8))])
def test_scaling(use_rslora, expected):
    assert FastActLoRALinear(nn.Linear(4, 4), r=8, alpha=16, use_rslora=use_rslora).scaling == pytest.approx(expected)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("lead_shape", [(7,), (2, 5), (3, 2, 4)])
def test_matches_peft_lora_function_and_gradients(backend, lead_shape):
    peft = pytest.importorskip("peft")
    torch.manual_seed(1)
    base = nn.Linear(48, 40)
    model = nn.Sequential(base)
    peft_model = peft.get_peft_model(model, peft.LoraConfig(r=8, lora_alpha=16, target_modules=["0"]))
    peft_layer = peft_model.base_model.model[0]
    nn.init.normal_(peft_layer.lora_B["default"].weight)

    ours = FastActLoRALinear(nn.Linear(48, 40), r=8, alpha=16, backend=backend)
    ours.base_layer.load_state_dict(peft_layer.base_layer.state_dict())
    ours.lora_A.weight.data.copy_(peft_layer.lora_A["default"].weight)
    ours.lora_B.weight.data.copy_(peft_layer.lora_B["default"].weight)

    x = torch.randn(*lead_shape, 48)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ours, y_peft = ours(x1), peft_layer(x2)
    dy = torch.randn_like(y_ours)
    y_ours.backward(dy)
    y_peft.backward(dy)
    torch.testing.assert_close(y_ours, y_peft, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x1.grad, x2.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.lora_A.weight.grad, peft_layer.lora_A["default"].weight.grad, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(ours.lora_B.weight.grad, peft_layer.lora_B["default"].weight.grad, atol=1e-4, rtol=1e-5)
    assert ours.base_layer.weight.grad is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_merge_unmerge_round_trip(dtype):
    layer = make_layer().to(dtype)
    x = torch.randn(3, 11, 48, dtype=dtype)
    weight_before = layer.base_layer.weight.detach().clone()
    y = layer(x)
    layer.merge()
    assert layer.merged
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=0.1, rtol=0.05)
    torch.testing.assert_close(layer(x), y, **tol)
    layer.unmerge()
    torch.testing.assert_close(layer.base_layer.weight, weight_before, **tol)
    torch.testing.assert_close(layer(x), y, **tol)
    with pytest.raises(RuntimeError, match="not merged"):
        layer.unmerge()


def test_disable_adapter_runs_the_base_only():
    layer = make_layer()
    x = torch.randn(5, 48)
    with layer.disable_adapter():
        torch.testing.assert_close(layer(x), layer.base_layer(x))
    assert not torch.allclose(layer(x), layer.base_layer(x))


def test_dropout_in_train_only_and_expectation():
    layer = make_layer(dropout=0.5)
    x = torch.randn(64, 48)
    layer.eval()
    y_eval = layer(x)
    torch.testing.assert_close(layer(x), y_eval)
    layer.train()
    torch.manual_seed(3)
    y1 = layer(x)
    y2 = layer(x)
    assert not torch.allclose(y1, y2)  # a fresh mask each call
    mean = torch.stack([layer(x) for _ in range(300)]).mean(0)
    lora_part = y_eval - layer.base_layer(x)
    assert ((mean - y_eval).abs().max() / lora_part.abs().max()).item() < 0.1


def test_dropout_seed_follows_torch_manual_seed():
    layer = make_layer(dropout=0.2)
    x = torch.randn(9, 48)
    torch.manual_seed(5)
    y1 = layer(x)
    torch.manual_seed(5)
    torch.testing.assert_close(layer(x), y1, atol=0, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_norm_stats_match_direct_computation_with_mask(backend):
    layer = make_layer(track_norms=True, backend=backend)
    x = torch.randn(4, 9, 48) * 3
    mask = torch.rand(4, 9) > 0.3
    layer.norm_token_mask = mask
    layer(x)
    norms = x[mask].double().norm(dim=-1)
    stats = layer.norm_stats()
    assert stats["count"] == int(mask.sum())
    assert stats["sum_sq_norm"] == pytest.approx(norms.square().sum().item(), rel=1e-5)
    assert stats["sum_norm"] == pytest.approx(norms.sum().item(), rel=1e-5)
    assert stats["mean_norm"] == pytest.approx(norms.mean().item(), rel=1e-5)
    assert stats["rms"] == pytest.approx(x[mask].double().square().mean().sqrt().item(), rel=1e-5)
    layer.norm_token_mask = None
    layer(x)  # accumulates: all 36 tokens on top of the masked ones
    assert layer.norm_stats()["count"] == int(mask.sum()) + 36
    layer.reset_norm_stats()
    assert layer.norm_stats()["count"] == 0


def test_norm_mask_shape_mismatch_is_named():
    layer = make_layer(track_norms=True)
    layer.norm_token_mask = torch.ones(3, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="norm_token_mask has shape"):
        layer(torch.randn(2, 5, 48))


@pytest.mark.parametrize("backend", BACKENDS)
def test_probe_mode_is_base_plus_norms(backend):
    base = nn.Linear(48, 40)
    probe = FastActLoRALinear(base, r=0, probe=True, backend=backend)
    assert probe.lora_A is None and not any(p.requires_grad for p in probe.parameters())
    x = torch.randn(6, 48)
    torch.testing.assert_close(probe(x), base(x), atol=1e-5, rtol=1e-5)
    assert probe.norm_stats()["count"] == 6
    layer = make_layer()
    layer.probe = True  # an adapter layer switched to probe mode skips its adapter
    torch.testing.assert_close(layer(x), layer.base_layer(x), atol=1e-5, rtol=1e-5)
    assert layer.norm_stats()["count"] == 6


def test_tracking_off_accumulates_nothing():
    layer = make_layer()
    layer(torch.randn(4, 48))
    assert layer.norm_stats()["count"] == 0


def test_autocast_casts_like_nn_linear():
    layer = make_layer()
    x = torch.randn(5, 48)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), layer(x), atol=0.15, rtol=0.05)
    y.float().sum().backward()
    assert layer.lora_A.weight.grad.dtype == torch.float32


def test_torch_compile_matches_eager():
    layer = make_layer(track_norms=True)
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)  # no graph break anywhere
    x = torch.randn(2, 7, 48)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_eager = layer(x1)
    y_compiled = compiled(x2)
    torch.testing.assert_close(y_compiled, y_eager)
    y_compiled.sum().backward()
    y_eager.sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad)
    assert layer.norm_stats()["count"] == 28


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(base=nn.Conv1d(3, 3, 1)), TypeError, "nn.Linear"),
        (dict(r=0), ValueError, "r must be >= 1"),
        (dict(r=-2), ValueError, "r must be >= 1"),
        (dict(r=2.5), TypeError, "r must be an int"),
        (dict(alpha=0), ValueError, "alpha"),
        (dict(alpha=math.inf), ValueError, "alpha must be a positive finite number"),
        (dict(alpha=math.nan), ValueError, "alpha must be a positive finite number"),
        (dict(dropout=1.0), ValueError, "dropout"),
        (dict(dropout=-0.1), ValueError, "dropout"),
        (dict(backend="cuda-magic"), ValueError, "unknown backend"),
    ],
)
def test_bad_construction_is_named(kwargs, error, match):
    args = dict(base=nn.Linear(4, 4), r=4)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        FastActLoRALinear(args.pop("base"), **args)


@pytest.mark.parametrize(
    "x, error, match",
    [
        (torch.randn(3, 47), ValueError, "in_features=48"),
        (torch.randint(0, 5, (3, 48)), TypeError, "floating-point"),
        (torch.randn(3, 48, dtype=torch.float64), TypeError, "differs from the weight"),
        ([[0.0] * 48], TypeError, "torch.Tensor"),
    ],
)
def test_bad_input_is_named(x, error, match):
    with pytest.raises(error, match=match):
        make_layer()(x)


def test_env_var_picks_backend_and_rejects_unknown(monkeypatch):
    layer = make_layer()
    x = torch.randn(3, 48)
    monkeypatch.setenv(BACKEND_ENV_VAR, "reference")
    y_ref = layer(x)
    monkeypatch.setenv(BACKEND_ENV_VAR, "nonsense")
    with pytest.raises(ValueError, match=BACKEND_ENV_VAR):
        layer(x)
    monkeypatch.delenv(BACKEND_ENV_VAR)
    torch.testing.assert_close(layer(x), y_ref)


def test_triton_on_cpu_without_interpreter_is_a_clear_error(kernels_not_interpreted):
    layer = make_layer(backend="triton")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        layer(torch.randn(3, 48))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("r", [8, 0], ids=["lora", "probe"])
def test_trainable_base_weight_and_bias_get_float64_gradients(backend, r):
    """A user who unfreezes the base gets dW and db as from nn.Linear (the fused backward used to drop them)."""
    torch.manual_seed(2)
    layer = FastActLoRALinear(nn.Linear(48, 40), r=r, probe=r == 0, backend=backend)
    if r:
        nn.init.normal_(layer.lora_B.weight)
    layer.base_layer.weight.requires_grad_(True)
    layer.base_layer.bias.requires_grad_(True)
    x = torch.randn(3, 7, 48)
    dy = torch.randn(3, 7, 40)
    layer(x).backward(dy)

    w64, b64 = (p.detach().double().requires_grad_() for p in (layer.base_layer.weight, layer.base_layer.bias))
    y64 = nn.functional.linear(x.double(), w64, b64)
    if r:
        y64 = y64 + layer.scaling * (x.double() @ layer.lora_A.weight.double().t()) @ layer.lora_B.weight.double().t()
    y64.backward(dy.double())
    assert_rel_close(layer.base_layer.weight.grad, w64.grad, TORCH_RTOL[torch.float32], "dW")
    assert_rel_close(layer.base_layer.bias.grad, b64.grad, TORCH_RTOL[torch.float32], "db")


@pytest.mark.parametrize("cast", ["half", "bfloat16", "to_dtype"])
def test_norm_statistics_stay_float64_when_the_module_is_cast(cast):
    """fp16 sums overflowed (Σ‖x‖² > 65504) and bf16 counts drifted (7,400 -> 7,392) when .half() / .to(dtype)
    cast the accumulators with the weights."""
    layer = make_layer(track_norms=True)
    layer(torch.randn(7400, 48) * 40)
    before = layer.norm_stats()
    assert before["sum_sq_norm"] > 1e6 and before["count"] == 7400
    {"half": lambda: layer.half(), "bfloat16": lambda: layer.to(torch.bfloat16),
     "to_dtype": lambda: layer.to(torch.float16)}[cast]()
    assert layer.base_layer.weight.dtype in (torch.float16, torch.bfloat16)
    assert layer.norm_stats() == before
    assert layer.norm_stat_tensor().dtype == layer.update_stat_tensor().dtype == torch.float64
    layer.to("cpu")  # a device move still moves them
    assert layer.norm_stats() == before


def test_merged_state_dict_round_trips_exactly():
    """A merged layer's state dict used to load as unmerged weights plus the adapter again: LoRA twice."""
    source = make_layer(seed=3)
    x = torch.randn(6, 48)
    source.merge()
    y_merged = source(x)
    state = source.state_dict()
    assert state["lora_merged"].item() is True
    fresh = make_layer(seed=4)
    fresh.load_state_dict(state)
    assert fresh.merged
    assert torch.equal(fresh(x), y_merged)
    assert torch.equal(fresh.base_layer.weight, source.base_layer.weight)
    fresh.unmerge()
    source.unmerge()
    assert torch.equal(fresh.base_layer.weight, source.base_layer.weight)
    # The other way round: an unmerged state dict makes a merged layer unmerged (its base weight is replaced).
    merged = make_layer(seed=5)
    merged.merge()
    merged.load_state_dict(source.state_dict())
    assert not merged.merged and torch.equal(merged(x), source(x))
    assert sorted(source.state_dict()) == ["base_layer.bias", "base_layer.weight", "lora_A.weight", "lora_B.weight"]


def test_merged_flag_without_base_weight_is_refused():
    layer = make_layer()
    partial = {"lora_A.weight": layer.lora_A.weight.detach(), "lora_B.weight": layer.lora_B.weight.detach(),
               "lora_merged": torch.tensor(True)}
    with pytest.raises(RuntimeError, match="lora_merged given without base_layer.weight"):
        layer.load_state_dict(partial, strict=False)


def test_integer_norm_token_mask_is_refused():
    layer = make_layer(track_norms=True)
    layer.norm_token_mask = torch.full((2, 5), 2)  # a 2 would count a token twice
    with pytest.raises(TypeError, match="norm_token_mask must be a bool tensor"):
        layer(torch.randn(2, 5, 48))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["lora", "lora-dropout", "probe"])
def test_update_score_matches_float64_with_mask(backend, mode):
    """sum_update = Σ_t ‖x_t‖·‖dy_t‖ over the unmasked tokens of every backward, reduced in the fused backward."""
    if mode == "probe":
        layer = FastActLoRALinear(nn.Linear(48, 40), r=0, probe=True, backend=backend, track_update=True)
    else:
        layer = make_layer(backend=backend, track_update=True, dropout=0.3 if mode == "lora-dropout" else 0.0)
    gen = torch.Generator().manual_seed(8)
    xs = [torch.randn(4, 9, 48, generator=gen) * 2 for _ in range(2)]
    dys = [torch.randn(4, 9, 40, generator=gen) for _ in range(2)]
    mask = torch.rand(4, 9, generator=gen) > 0.3
    layer.norm_token_mask = mask
    for x, dy in zip(xs, dys):  # x needs no grad: the update sink alone makes the backward run (probe mode)
        layer(x).backward(dy)
    expected = sum(update_sums_reference(x, dy, mask) for x, dy in zip(xs, dys))
    stats = layer.norm_stats()
    assert stats["update_count"] == 2 * int(mask.sum())
    assert stats["sum_update"] == pytest.approx(expected[0].item(), rel=NORM_RTOL)
    assert stats["mean_update"] == pytest.approx((expected[0] / expected[1]).item(), rel=NORM_RTOL)
    layer.reset_norm_stats()
    assert layer.norm_stats()["sum_update"] == 0.0 and layer.norm_stats()["update_count"] == 0


def test_update_score_off_or_without_grad_accumulates_nothing():
    layer = make_layer(track_norms=True)
    layer(torch.randn(5, 48, requires_grad=True)).sum().backward()
    assert layer.norm_stats()["update_count"] == 0
    layer.track_update = True
    with torch.no_grad():
        layer(torch.randn(5, 48))
    assert layer.norm_stats()["update_count"] == 0


def test_meta_device_input_is_refused_clearly():
    layer = FastActLoRALinear(nn.Linear(5, 3), r=2)
    with pytest.raises(ValueError, match="meta device"):
        layer(torch.empty(2, 5, device="meta"))
