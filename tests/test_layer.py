"""FastActLoRALinear as a module: faithful LoRA (vs PEFT), merge, dropout, norm stats, errors, compile."""
import math

import pytest
import torch
from torch import nn

from act_lora_fast import FastActLoRALinear
from act_lora_fast.functional import BACKEND_ENV_VAR

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


def test_triton_on_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    layer = make_layer(backend="triton")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        layer(torch.randn(3, 48))
