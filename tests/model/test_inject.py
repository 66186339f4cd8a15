"""Selective injection: only the chosen blocks get LoRA, everything else frozen, clear errors."""
import copy

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D
from tests.models import tiny_bert, tiny_model, token_batch  # noqa: F401

import act_lora_fast as A
from act_lora_fast import apply_act_lora
from act_lora_fast.model.anatomy import Conv1DAsLinear, target_linears
from act_lora_fast.model.inject import ActLoRAConfig, count_lora_parameters, lora_modules, remove_act_lora
from act_lora_fast.layer import FastActLoRALinear

pytestmark = pytest.mark.usefixtures("one_thread")


def _randomize_lora(model, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_modules(model).values():
            layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=generator) * 0.2)


def test_only_chosen_blocks_get_lora_and_only_lora_trains(caplog):
    model = tiny_model("llama", layers=4)
    batch = token_batch(seed=1)
    with torch.no_grad():
        before = model(**batch).logits
    with caplog.at_level("INFO", logger="act_lora_fast.model.inject"):
        returned = apply_act_lora(model, [3, 1], r=4, alpha=8, modules_to_save=["score"])
    assert returned is model
    adapters = lora_modules(model)
    assert sorted({name.split(".")[2] for name in adapters}) == ["1", "3"] and len(adapters) == 14
    for index in (0, 2):
        assert all(type(m) is nn.Linear for m in target_linears(model)[index].values())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{n}.lora_{ab}.weight" for n in adapters for ab in "AB"} | {"score.weight"}
    cfg = model.act_lora_config
    assert cfg == ActLoRAConfig(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                                         "gate_proj", "up_proj", "down_proj"],
                                layers=[1, 3], block_path="model.layers", layers_pattern="layers",
                                modules_to_save=["score"])
    line = caplog.text
    per_block = 4 * sum(sum(m.weight.shape) for m in target_linears(model)[0].values())  # r·(in+out) of block 0
    assert f"{2 * per_block:,} LoRA parameters = 50.0% of all-layer LoRA's {4 * per_block:,}" in line
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, before)  # B = 0 at init

    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    for _ in range(2):
        optimizer.zero_grad()
        model(**batch).loss.backward()
        optimizer.step()
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    assert any(m.lora_B.weight.abs().sum() > 0 for m in lora_modules(model).values())


def test_count_lora_parameters_and_target_forms():
    model = tiny_model("bert", layers=3)
    qv = count_lora_parameters(model, [0, 2], target_modules=["query", "value"], r=2)
    assert qv == 2 * 2 * 2 * (48 + 48)
    assert count_lora_parameters(model, r=1) == 3 * (4 * 96 + 2 * (48 + 80))
    apply_act_lora(model, [2], target_modules=r".*attention\.self\.(query|key)", verbose=False)
    assert sorted(lora_modules(model)) == ["bert.encoder.layer.2.attention.self.key",
                                           "bert.encoder.layer.2.attention.self.query"]
    assert model.act_lora_config.target_modules == ["key", "query"]
    assert count_lora_parameters(model, [2], target_modules=["query", "key"], r=3) == 3 * 2 * 96  # on injected


def test_clear_errors_and_nothing_touched():
    model = tiny_model("llama", layers=3)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    for layers, error, match in (([3], ValueError, r"block index 3 does not exist: the model has 3 blocks"),
                                 ([-1], ValueError, "block index -1"), ([], ValueError, "layers is empty"),
                                 ([1.0], TypeError, "layers must hold ints"), ("12", TypeError, "list of block")):
        with pytest.raises(error, match=match):
            apply_act_lora(model, layers, verbose=False)
    with pytest.raises(ValueError, match="r must be an int >= 1"):
        apply_act_lora(model, [0], r=0, verbose=False)
    with pytest.raises(ValueError, match="dropout must be in"):
        apply_act_lora(model, [0], dropout=1.0, verbose=False)
    with pytest.raises(ValueError, match="modules_to_save entry 'classifier' matches no module"):
        apply_act_lora(model, [0], modules_to_save=["classifier"], verbose=False)
    with pytest.raises(ValueError, match="unknown backend"):
        apply_act_lora(model, [0], backend="cuda", verbose=False)
    assert not lora_modules(model) and {n: p.requires_grad for n, p in model.named_parameters()} == flags
    apply_act_lora(model, [0], verbose=False)
    with pytest.raises(RuntimeError, match="already applied"):
        apply_act_lora(model, [1], verbose=False)


def test_gpt2_conv1d_injection_shares_weights_and_removes_cleanly():
    model = tiny_model("gpt2", layers=3)
    batch = token_batch(seed=4)
    conv = model.transformer.h[1].attn.c_attn
    with torch.no_grad():
        before = model(**batch).logits
    apply_act_lora(model, [1], r=3, verbose=False)
    layer = model.transformer.h[1].attn.c_attn
    assert isinstance(layer, FastActLoRALinear) and isinstance(layer.base_layer, Conv1DAsLinear)
    assert layer.base_layer.weight.data_ptr() == conv.weight.data_ptr()  # not copied
    assert layer.lora_A.weight.shape == (3, 48) and layer.lora_B.weight.shape == (144, 3)
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, before, rtol=1e-5, atol=1e-6)
    _randomize_lora(model)
    with torch.no_grad():
        adapted = model(**batch).logits
    assert not torch.allclose(adapted, before, atol=1e-3)

    merged = remove_act_lora(copy.deepcopy(model), merge=True)
    restored = remove_act_lora(model)
    for net in (merged, restored):
        assert not lora_modules(net) and not hasattr(net, "act_lora_config")
        assert isinstance(net.transformer.h[1].attn.c_attn, Conv1D)
    with torch.no_grad():
        torch.testing.assert_close(merged(**batch).logits, adapted, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(restored(**batch).logits, before, rtol=1e-5, atol=1e-6)
    apply_act_lora(restored, [0], verbose=False)  # removable, so applicable again
    assert sorted({n.split(".")[2] for n in lora_modules(restored)}) == ["0"]


@pytest.mark.parametrize("kind", ["bert", "llama", "gpt2"])
def test_every_backend_gives_the_same_model_and_gradients(kind):
    """The Triton kernels (interpreter) and the reference inside a whole Hugging Face model, against the
    torch path: HF's 3-D, strided and head-split inputs reach the op unchanged on every backend."""
    base = tiny_model(kind, layers=2)
    batch = token_batch(seed=2)
    results = {}
    for backend in ("torch", "triton", "reference"):
        model = copy.deepcopy(base)
        torch.manual_seed(0)  # lora_A's Kaiming init draws from the global generator
        apply_act_lora(model, [0, 1], r=4, alpha=8, backend=backend, verbose=False)
        _randomize_lora(model, seed=5)
        loss = model(**batch).loss
        loss.backward()
        results[backend] = (loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    loss_ref, grads_ref = results["torch"]
    assert len(grads_ref) > 0
    for backend in ("triton", "reference"):
        loss, grads = results[backend]
        torch.testing.assert_close(loss, loss_ref, rtol=1e-5, atol=1e-6)
        assert grads.keys() == grads_ref.keys()
        for name, grad in grads.items():
            torch.testing.assert_close(grad, grads_ref[name], rtol=1e-4, atol=1e-6, msg=f"{backend}: {name}")


def test_apply_act_lora_modules_to_save_type():
    with pytest.raises(TypeError, match="modules_to_save must be a module name or a list of them, got int"):
        A.apply_act_lora(tiny_bert().eval(), [0], modules_to_save=5, verbose=False)


def test_new_layers_take_the_models_train_or_eval_mode():
    """Issue 10.1: with dropout > 0, two no_grad forwards of a model in eval() must agree after injection."""
    model = apply_act_lora(tiny_model("llama", layers=2).eval(), [0, 1], r=4, dropout=0.5, verbose=False)
    layers = lora_modules(model)
    assert layers and not any(layer.training for layer in layers.values())
    with torch.no_grad():
        for layer in layers.values():
            layer.lora_B.weight.normal_()  # a non-zero update, so dropout would show in the output
        batch = {k: v for k, v in token_batch(seed=1).items() if k != "labels"}
        torch.testing.assert_close(model(**batch).logits, model(**batch).logits, rtol=0, atol=0)
    trained = apply_act_lora(tiny_model("llama", layers=2).train(), [0], r=4, dropout=0.5, verbose=False)
    assert all(layer.training for layer in lora_modules(trained).values())
