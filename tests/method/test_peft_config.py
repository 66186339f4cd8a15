"""act_lora_config / get_act_lora_model: the activation ranking's blocks as a plain PEFT LoraConfig."""
import copy
import json

import pytest
import torch

peft = pytest.importorskip("peft")
from peft import PeftModel, get_peft_model  # noqa: E402
from peft.tuners.lora import Linear as PeftLoraLinear  # noqa: E402

from act_lora_fast.method.peft_config import act_lora_config, get_act_lora_model  # noqa: E402
from act_lora_fast.model.peft_layer import FusedLoraLinear, is_peft_patched  # noqa: E402
from act_lora_fast.method.profiling import profile_activations  # noqa: E402
from act_lora_fast.method.selection import select_layers  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
VOCAB = 97


def tiny_llama(layers=5, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=24, intermediate_size=40, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


def tiny_gpt2(layers=4, seed=0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=VOCAB, n_embd=24, n_layer=layers, n_head=4, n_positions=64)
    return GPT2LMHeadModel(config).eval()


def batches(count=2, batch=3, seq=11, seed=1):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        mask = torch.ones(batch, seq, dtype=torch.long)
        mask[0, seq - 4:] = 0  # some padding
        out.append({"input_ids": torch.randint(0, VOCAB, (batch, seq), generator=gen), "attention_mask": mask})
    return out


def lora_names(model):
    return {name.removeprefix("base_model.model.") for name, m in model.named_modules()
            if isinstance(m, PeftLoraLinear)}


@pytest.mark.parametrize("how", [dict(k=2), dict(fraction=0.4), dict(cumulative=0.5)], ids=["k", "fraction",
                                                                                            "cumulative"])
def test_config_selects_the_ranked_blocks_and_their_targets(how):
    model, data = tiny_llama(), batches()
    scores = profile_activations(model, data, progress=False)
    layers = select_layers(scores, **how)
    config = act_lora_config(model, data, r=4, lora_alpha=8, **how)
    assert config.layers_to_transform == layers and config.layers_pattern == "layers"
    assert (config.r, config.lora_alpha) == (4, 8)
    expected = {name for name in scores.module_scores if scores.block_of(name) in layers}
    assert lora_names(get_peft_model(model, config)) == expected
    assert len({scores.block_of(n) for n in expected}) == len(layers) >= 1


def test_target_modules_and_metric_are_profiled_choices():
    model, data = tiny_llama(), batches()
    scores = profile_activations(model, data, target_modules=["q_proj", "v_proj"], metric="input_rms",
                                 progress=False)
    config = act_lora_config(model, data, k=1, target_modules=["q_proj", "v_proj"], metric="input_rms")
    assert config.target_modules == {"self_attn.q_proj", "self_attn.v_proj"}
    assert config.layers_to_transform == [scores.ranking()[0]]


def test_profiling_leaves_the_model_as_it_was():
    model, data = tiny_llama(), batches()
    before = copy.deepcopy(model.state_dict())
    types = [type(m) for m in model.modules()]
    act_lora_config(model, data, k=2)
    assert [type(m) for m in model.modules()] == types
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_get_act_lora_model_fuses_gpt2_conv1d_and_saves_a_plain_peft_adapter(tmp_path):
    model, data = tiny_gpt2(), batches()
    config = act_lora_config(copy.deepcopy(model), data, k=2, r=4, lora_alpha=8, init_lora_weights=False)
    torch.manual_seed(3)
    ours = get_act_lora_model(copy.deepcopy(model), data, k=2, r=4, lora_alpha=8, init_lora_weights=False)
    assert not is_peft_patched()
    layers = [m for m in ours.modules() if isinstance(m, PeftLoraLinear)]
    assert layers and all(type(m) is FusedLoraLinear for m in layers)
    assert {type(m.base_layer).__name__ for m in layers} == {"Conv1D"}
    torch.manual_seed(3)
    ref = get_peft_model(copy.deepcopy(model), config)  # plain PEFT, same config and init
    assert lora_names(ours) == lora_names(ref)
    ids = data[0]["input_ids"]
    with torch.no_grad():
        expected = ref(input_ids=ids).logits
        torch.testing.assert_close(ours(input_ids=ids).logits, expected, rtol=1e-5, atol=1e-5)

    ours.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["layers_to_transform"] == config.layers_to_transform and saved["layers_pattern"] == "h"
    loaded = PeftModel.from_pretrained(copy.deepcopy(model), tmp_path)  # no act_lora_fast involved
    assert all(type(m) is PeftLoraLinear for m in loaded.modules() if isinstance(m, PeftLoraLinear))
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, expected, rtol=1e-5, atol=1e-5)


def test_bad_input_is_named():
    model, data = tiny_llama(layers=2), batches(count=1)
    with pytest.raises(TypeError, match="layers_to_transform"):
        act_lora_config(model, data, k=1, layers_to_transform=[0])
    with pytest.raises(TypeError, match="layers_pattern"):
        act_lora_config(model, data, k=1, layers_pattern="layers")
    with pytest.raises(ValueError, match="exactly one of k, fraction or cumulative"):
        act_lora_config(model, data, k=1, fraction=0.5)
    with pytest.raises(ValueError, match="k must be an int between 1"):
        act_lora_config(model, data, k=3)
    with pytest.raises(ValueError, match="unknown metric"):
        act_lora_config(model, data, k=1, metric="weight_norm")


def test_lora_fields_are_checked_before_profiling(monkeypatch):
    """A bad rank or an unknown LoraConfig field fails before the calibration batches are run."""
    from act_lora_fast.method import peft_config

    profiled = []
    monkeypatch.setattr(peft_config, "profile_activations", lambda *a, **k: profiled.append(1))
    model, data = tiny_llama(layers=2), batches(count=1)
    with pytest.raises(ValueError, match="act_lora_config: r must be an int >= 1, got 0"):
        act_lora_config(model, data, k=1, r=0)
    with pytest.raises(ValueError, match="act_lora_config: dropout"):
        act_lora_config(model, data, k=1, lora_dropout=1.5)
    with pytest.raises(TypeError, match="no_such_field"):
        act_lora_config(model, data, k=1, no_such_field=3)
    assert not profiled
