"""FusedLoraLinear against PEFT's own lora.Linear: same outputs and gradients, fused or falling back.

Every comparison builds the same model twice from one seed, once with plain PEFT and once patched, with random
(non-zero) B so the adapter contributes. float64 comparisons use tolerance 1e-12 relative to the output scale.
"""
import contextlib
import copy
import filecmp
import os

import pytest
import torch
from torch import nn

peft = pytest.importorskip("peft")
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from peft.tuners.lora import Linear as PeftLoraLinear  # noqa: E402
from transformers.pytorch_utils import Conv1D  # noqa: E402

from act_lora_fast.functional import dropout_mask  # noqa: E402
from act_lora_fast.model import peft_layer  # noqa: E402
from act_lora_fast.model.peft_layer import (  # noqa: E402
    FusedLoraLinear, fused_lora_config, is_peft_patched, patch_peft, peft_patched, unpatch_peft)

pytestmark = pytest.mark.usefixtures("one_thread")
IN, HIDDEN, OUT = 13, 29, 7  # odd sizes on purpose
F64_TOL = dict(rtol=1e-12, atol=1e-12)


class MLP(nn.Module):
    def __init__(self, bias=True, conv1d=False):
        super().__init__()
        self.lin0 = Conv1D(HIDDEN, IN) if conv1d else nn.Linear(IN, HIDDEN, bias=bias)
        self.lin1 = nn.Linear(HIDDEN, OUT, bias=bias)
        self.emb_proj = nn.Linear(OUT, OUT)

    def forward(self, x):
        return self.emb_proj(torch.tanh(self.lin1(torch.relu(self.lin0(x)))))


def _config(**kwargs):
    kwargs.setdefault("target_modules", ["lin0", "lin1"])
    return LoraConfig(r=kwargs.pop("r", 4), lora_alpha=kwargs.pop("lora_alpha", 8), init_lora_weights=False,
                      **kwargs)


def pair(model_kwargs=None, dtype=torch.float64, seed=0, **config_kwargs):
    """(plain PEFT model, patched PEFT model) with identical weights."""
    torch.manual_seed(seed)
    base = MLP(**(model_kwargs or {})).to(dtype)
    base_copy = copy.deepcopy(base)
    torch.manual_seed(seed + 1)
    ref = get_peft_model(base, _config(**config_kwargs))
    torch.manual_seed(seed + 1)
    with peft_patched():
        ours = get_peft_model(base_copy, _config(**config_kwargs))
    return ref, ours


@pytest.fixture
def fused_calls(monkeypatch):
    """Counts calls of the fused op made by FusedLoraLinear."""
    calls = []
    original = peft_layer.lora_linear

    def counting(*args, **kwargs):
        calls.append(kwargs.get("dropout_p"))
        return original(*args, **kwargs)

    monkeypatch.setattr(peft_layer, "lora_linear", counting)
    return calls


def inputs(dtype=torch.float64, shape=(3, 5), seed=7):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, IN, generator=gen).to(dtype).requires_grad_()


def run(model, x, **kwargs):
    """Output, input gradient and trainable-parameter gradients of a sum-of-squares loss."""
    x = x.detach().clone().requires_grad_()
    model.zero_grad(set_to_none=True)
    y = model(x, **kwargs)
    (y * torch.linspace(-1, 2, y.shape[-1], dtype=y.dtype)).square().sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return y.detach(), x.grad, grads


def assert_same(ref_run, our_run, rel=1e-12):
    """Outputs and gradients equal within `rel` of each tensor's largest entry (and `rel` relatively)."""
    (y_ref, dx_ref, g_ref), (y, dx, g) = ref_run, our_run
    assert g.keys() == g_ref.keys()
    pairs = {"output": (y, y_ref), "input grad": (dx, dx_ref), **{n: (g[n], g_ref[n]) for n in g_ref}}
    for name, (ours, ref) in pairs.items():
        atol = rel * max(ref.abs().max().item(), 1e-30)
        torch.testing.assert_close(ours, ref, rtol=rel, atol=atol, msg=lambda m: f"{name}: {m}")


def lora_layers(model):
    return [m for m in model.modules() if isinstance(m, PeftLoraLinear)]


# ---------------------------------------------------------------------- fused cases
FUSED_CASES = {
    "bias": dict(),
    "no bias": dict(model_kwargs=dict(bias=False)),
    "conv1d": dict(model_kwargs=dict(conv1d=True)),
    "rslora r=3": dict(r=3, use_rslora=True),
    "rank pattern": dict(rank_pattern={"lin1": 2}, alpha_pattern={"lin1": 5}),
    "dropout, eval mode": dict(lora_dropout=0.3),
}


@pytest.mark.parametrize("case", FUSED_CASES)
@pytest.mark.parametrize("shape", [(11,), (3, 5)], ids=["2d", "3d"])
def test_fused_matches_peft_float64(case, shape, fused_calls):
    kwargs = dict(FUSED_CASES[case])
    ref, ours = pair(**kwargs)
    if "lora_dropout" in kwargs:
        ref.eval(), ours.eval()
    assert all(type(m) is FusedLoraLinear for m in lora_layers(ours))
    assert all(type(m) is PeftLoraLinear for m in lora_layers(ref))
    x = inputs(shape=shape)
    assert_same(run(ref, x), run(ours, x))
    assert fused_calls == [0.0, 0.0]  # both LoRA layers fused, without dropout


def test_fused_without_grad_matches_peft(fused_calls):
    ref, ours = pair()
    x = inputs()
    with torch.inference_mode():
        torch.testing.assert_close(ours(x), ref(x), **F64_TOL)
    assert len(fused_calls) == 2


class FixedMask(nn.Module):
    """PEFT's dropout slot with our op's mask for a known seed: PEFT's formula with our random stream."""

    def __init__(self, p, seed):
        super().__init__()
        self.p, self.seed = p, seed

    def forward(self, x):
        x2d = x.reshape(-1, x.shape[-1])
        return (x2d * dropout_mask(x2d.shape, self.p, self.seed, x.device, x.dtype)).reshape(x.shape)


@pytest.mark.parametrize("conv1d", [False, True], ids=["linear", "conv1d"])
def test_fused_dropout_is_peft_formula_with_our_mask(conv1d, fused_calls, monkeypatch):
    p, seed = 0.4, 1234
    ref, ours = pair(model_kwargs=dict(conv1d=conv1d), lora_dropout=p)
    ref.train(), ours.train()
    monkeypatch.setattr(peft_layer, "new_dropout_seed", lambda: seed)
    for layer in lora_layers(ref):
        layer.lora_dropout["default"] = FixedMask(p, seed)
    x = inputs()
    assert_same(run(ref, x), run(ours, x))
    assert fused_calls == [p, p]
    # and the mask is really applied: without it the output differs
    for layer in lora_layers(ref):
        layer.lora_dropout["default"] = nn.Identity()
    assert not torch.allclose(run(ref, x)[0], run(ours, x)[0])


def test_dropout_draws_a_fresh_mask_each_call(fused_calls):
    _, ours = pair(lora_dropout=0.5)
    ours.train()
    x = inputs()
    assert not torch.equal(ours(x), ours(x))
    ours.eval()
    assert torch.equal(ours(x), ours(x))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_fused_under_autocast_matches_peft(dtype, fused_calls):
    ref, ours = pair(dtype=torch.float32)
    x = inputs(torch.float32)
    with torch.autocast("cpu", dtype=dtype):
        ref_run, our_run = run(ref, x), run(ours, x)
    assert our_run[0].dtype == ref_run[0].dtype
    # a few roundings (bf16 2^-8, fp16 2^-11 each) relative to the tensor's scale
    assert_same(ref_run, our_run, rel=3e-2 if dtype == torch.bfloat16 else 5e-3)
    assert len(fused_calls) == 2


# ---------------------------------------------------------------------- fallback cases
def _merged(ref, ours):
    ref.merge_adapter(), ours.merge_adapter()


def _two_active(ref, ours):
    for model in (ref, ours):
        torch.manual_seed(5)
        model.add_adapter("other", _config())
        model.base_model.set_adapter(["default", "other"])


def _base_trainable(ref, ours):
    for model in (ref, ours):
        model.base_model.model.lin0.base_layer.weight.requires_grad_(True)


def _hooked(ref, ours):
    for model in (ref, ours):
        model.base_model.model.lin0.lora_A["default"].register_forward_hook(lambda m, i, o: o * 1.5)


def _adapter_dtype(ref, ours):
    for model in (ref, ours):  # fp32 adapters on an fp64 base: PEFT casts x for the adapter only
        for layer in lora_layers(model):
            layer.lora_A.float(), layer.lora_B.float()


FALLBACK_CASES = {
    "merged": (dict(), _merged, 0),
    "two active adapters": (dict(), _two_active, 0),
    "dora": (dict(use_dora=True), None, 0),
    "lora_bias": (dict(lora_bias=True), None, 0),
    "base weight trainable": (dict(), _base_trainable, 1),  # lin1 still fuses
    "hook on lora_A": (dict(), _hooked, 1),
    "adapter dtype differs": (dict(), _adapter_dtype, 0),
}


@pytest.mark.parametrize("case", FALLBACK_CASES)
def test_fallback_matches_peft_float64(case, fused_calls):
    config_kwargs, prepare, expected_fused = FALLBACK_CASES[case]
    ref, ours = pair(**config_kwargs)
    if prepare is not None:
        prepare(ref, ours)
    x = inputs()
    assert_same(run(ref, x), run(ours, x))
    assert len(fused_calls) == expected_fused


def test_disabled_adapters_fall_back(fused_calls):
    ref, ours = pair()
    x = inputs()
    with ref.disable_adapter(), ours.disable_adapter():
        torch.testing.assert_close(ours(x), ref(x), **F64_TOL)
        torch.testing.assert_close(ours(x), ours.get_base_model()(x), **F64_TOL)
    assert fused_calls == []
    torch.testing.assert_close(ours(x), ref(x), **F64_TOL)
    assert len(fused_calls) == 2


def test_mixed_batch_falls_back_and_matches_peft(fused_calls):
    ref, ours = pair()
    for model in (ref, ours):
        torch.manual_seed(3)
        model.add_adapter("other", _config())
        model.eval()  # PEFT allows adapter_names only in eval mode
    x = inputs(shape=(4, 2))
    names = ["default", "other", "__base__", "other"]
    with torch.no_grad():
        torch.testing.assert_close(ours(x, adapter_names=names), ref(x, adapter_names=names), **F64_TOL)
    assert fused_calls == []


# ---------------------------------------------------------------------- adapters, state, merging
def test_multiple_adapters_switch_and_fuse(fused_calls):
    ref, ours = pair()
    for model in (ref, ours):
        torch.manual_seed(9)
        model.add_adapter("other", _config(r=6, target_modules=["lin1"]))
        model.set_adapter("other")
    x = inputs()
    assert_same(run(ref, x), run(ours, x))
    assert len(fused_calls) == 1  # lin0 holds no "other": PEFT's forward runs it (base only)
    assert type(ours.base_model.model.lin1) is FusedLoraLinear
    ours.set_adapter("default"), ref.set_adapter("default")
    assert_same(run(ref, x), run(ours, x))
    ours.delete_adapter("other"), ref.delete_adapter("other")
    assert ours.state_dict().keys() == ref.state_dict().keys()


def test_state_dict_and_adapter_files_identical(tmp_path):
    ref, ours = pair(model_kwargs=dict(conv1d=True))
    ref_sd, our_sd = ref.state_dict(), ours.state_dict()
    assert list(our_sd) == list(ref_sd)
    for key in ref_sd:
        assert torch.equal(our_sd[key], ref_sd[key]), key
    ref.save_pretrained(tmp_path / "ref"), ours.save_pretrained(tmp_path / "ours")
    files = sorted(os.listdir(tmp_path / "ref"))
    assert files == sorted(os.listdir(tmp_path / "ours")) and "adapter_model.safetensors" in files
    match, mismatch, errors = filecmp.cmpfiles(tmp_path / "ref", tmp_path / "ours", files, shallow=False)
    assert mismatch == [] and errors == []


@pytest.mark.parametrize("patched_load", [False, True], ids=["plain-load", "patched-load"])
def test_adapter_reloads_to_same_outputs(tmp_path, patched_load, fused_calls):
    _, ours = pair()
    ours.save_pretrained(tmp_path)
    x = inputs()
    torch.manual_seed(0)
    base = MLP().double()
    with peft_patched() if patched_load else contextlib.nullcontext():
        loaded = PeftModel.from_pretrained(base, tmp_path)
    expected_type = FusedLoraLinear if patched_load else PeftLoraLinear
    assert all(type(m) is expected_type for m in lora_layers(loaded))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), ours(x), **F64_TOL)


def test_merge_round_trips(fused_calls):
    ref, ours = pair(model_kwargs=dict(conv1d=True))
    x = inputs()
    with torch.no_grad():
        before = ours(x)
        ours.merge_adapter()
        torch.testing.assert_close(ours(x), before, **F64_TOL)
        ours.unmerge_adapter()
        torch.testing.assert_close(ours(x), before, **F64_TOL)
        merged = ours.merge_and_unload()
        assert type(merged.lin0) is Conv1D and type(merged.lin1) is nn.Linear
        torch.testing.assert_close(merged(x), before, **F64_TOL)
        torch.testing.assert_close(ref.merge_and_unload()(x), before, **F64_TOL)
    assert len(fused_calls) == 4  # the fused forwards before merging and after unmerging


def test_requires_grad_and_trainable_parameters_are_peft_s():
    ref, ours = pair(modules_to_save=["emb_proj"])
    assert ({n for n, p in ours.named_parameters() if p.requires_grad}
            == {n for n, p in ref.named_parameters() if p.requires_grad})
    assert ours.get_nb_trainable_parameters() == ref.get_nb_trainable_parameters()


# ---------------------------------------------------------------------- switches
def test_patch_unpatch_and_context_manager():
    assert not is_peft_patched()
    patch_peft()
    patch_peft()  # idempotent
    try:
        assert is_peft_patched()
        model = get_peft_model(MLP(), _config())
        assert type(model.base_model.model.lin0) is FusedLoraLinear
    finally:
        unpatch_peft()
    assert not is_peft_patched()
    assert type(get_peft_model(MLP(), _config()).base_model.model.lin0) is PeftLoraLinear
    with peft_patched():
        with peft_patched():
            pass
        assert is_peft_patched()  # the inner block does not unpatch the outer one
    assert not is_peft_patched()


def test_patch_leaves_other_layer_types_to_peft():
    class WithEmbedding(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, IN)
            self.lin0 = nn.Linear(IN, OUT)

    with peft_patched():
        model = get_peft_model(WithEmbedding(), _config(target_modules=["emb", "lin0"]))
    assert type(model.base_model.model.emb).__name__ == "Embedding"
    assert type(model.base_model.model.lin0) is FusedLoraLinear


def test_per_config_form_without_global_patch(fused_calls):
    ref, _ = pair(model_kwargs=dict(conv1d=True))
    torch.manual_seed(0)
    base = MLP(conv1d=True).double()
    torch.manual_seed(1)
    with pytest.warns(UserWarning, match="fan_in_fan_out is set to False"):
        ours = get_peft_model(base, fused_lora_config(_config()))
    assert not is_peft_patched()
    assert all(type(m) is FusedLoraLinear for m in lora_layers(ours))
    assert ours.base_model.model.lin0.fan_in_fan_out and ours.base_model.model.lin0.is_target_conv_1d_layer
    x = inputs()
    assert_same(run(ref, x), run(ours, x))
    assert len(fused_calls) == 2
    with pytest.raises(TypeError, match="peft.LoraConfig"):
        fused_lora_config({"r": 4})
