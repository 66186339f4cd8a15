"""Model anatomy: block stacks and target linears per architecture."""
import pytest
import torch
import transformers
from torch import nn
from transformers.pytorch_utils import Conv1D

from act_lora_fast.model.anatomy import (Conv1DAsLinear, as_linear, default_target_modules, find_blocks, linear_shape,
                                   target_linears)
from tests.models import tiny_model  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

EXPECTED = {  # kind -> (block path with a classification head, layers_pattern, targets per block)
    "bert": ("bert.encoder.layer", "layer", 6),
    "roberta": ("roberta.encoder.layer", "layer", 6),
    "electra": ("electra.encoder.layer", "layer", 6),
    "deberta-v2": ("deberta.encoder.layer", "layer", 6),
    "distilbert": ("distilbert.transformer.layer", "layer", 6),
    "llama": ("model.layers", "layers", 7),
    "mistral": ("model.layers", "layers", 7),
    "qwen2": ("model.layers", "layers", 7),
    "qwen3": ("model.layers", "layers", 7),
    "gemma": ("model.layers", "layers", 7),
    "gpt2": ("transformer.h", "h", 4),
    "opt": ("model.decoder.layers", "layers", 6),
}


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_blocks_and_default_targets_per_architecture(kind):
    model = tiny_model(kind, layers=3)
    path, pattern, per_block = EXPECTED[kind]
    stack = find_blocks(model)
    assert (stack.path, stack.layers_pattern, len(stack)) == (path, pattern, 3)
    assert stack.blocks[1] is model.get_submodule(f"{path}.1")
    targets = target_linears(model)
    assert sorted(targets) == [0, 1, 2]
    for index, modules in targets.items():
        assert len(modules) == per_block
        for name, module in modules.items():
            assert name.startswith(f"{path}.{index}.")
            assert model.get_submodule(name) is module
            assert isinstance(module, (nn.Linear, Conv1D))


@pytest.mark.parametrize("kind,head,path", [("llama", None, "layers"), ("llama", "lm", "model.layers"),
                                            ("gpt2", None, "h"), ("bert", None, "encoder.layer"),
                                            ("opt", "lm", "model.decoder.layers")])
def test_with_and_without_task_head(kind, head, path):
    model = tiny_model(kind, head=head, layers=2)
    assert find_blocks(model).path == path
    names = [n for modules in target_linears(model).values() for n in modules]
    assert names and all(n.startswith(path + ".") for n in names)
    assert not any("lm_head" in n or "pooler" in n for n in names)


def test_target_module_forms_match_like_peft():
    model = tiny_model("bert", layers=2)
    by_list = target_linears(model, ["query", "value"])
    assert sorted(n.rsplit(".", 1)[-1] for n in by_list[0]) == ["query", "value"]
    dotted = target_linears(model, ["attention.output.dense"])  # a dotted suffix, as PEFT allows
    assert list(dotted[1]) == ["bert.encoder.layer.1.attention.output.dense"]
    regex = target_linears(model, r".*\.1\.intermediate\.dense")
    assert regex[0] == {} and list(regex[1]) == ["bert.encoder.layer.1.intermediate.dense"]
    everything = target_linears(model, "all-linear")
    assert len(everything[0]) == 6
    assert "bert.pooler.dense" not in {n for m in everything.values() for n in m}
    # "dense" must not match "dense_something" nor the pooler outside the blocks
    assert all(n.endswith(".dense") for n in target_linears(model, ["dense"])[0])


def test_default_target_modules_known_and_unknown():
    assert default_target_modules(tiny_model("llama")) == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                          "up_proj", "down_proj"]
    assert default_target_modules(tiny_model("gpt2")) == ["c_attn", "c_proj", "c_fc"]

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.mix, self.out = nn.Linear(5, 7), nn.Linear(7, 5)

        def forward(self, x):
            return x + self.out(torch.relu(self.mix(x)))

    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.stages = nn.ModuleList(Block() for _ in range(3))
            self.head = nn.Linear(5, 2)

    model = Custom()
    assert default_target_modules(model) == ["mix", "out"]
    assert find_blocks(model).path == "stages"
    assert list(target_linears(model)[2]) == ["stages.2.mix", "stages.2.out"]


def test_blocks_override_and_clear_errors():
    model = tiny_model("llama", layers=2)
    assert find_blocks(model, blocks="model.layers").path == "model.layers"
    with pytest.raises(ValueError, match="no submodule"):
        find_blocks(model, blocks="model.nope")
    with pytest.raises(ValueError, match="expected a non-empty nn.ModuleList"):
        find_blocks(model, blocks="model.norm")
    with pytest.raises(TypeError, match="module path string"):
        find_blocks(model, blocks=3)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        find_blocks("not a model")
    unreadable = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
    with pytest.raises(ValueError, match="blocks='model.layers'"):
        find_blocks(unreadable)
    with pytest.raises(ValueError, match=r"matches no linear .*q_proj"):
        target_linears(model, ["not_a_module"])
    with pytest.raises(ValueError, match="not a valid regex"):
        target_linears(model, "(unclosed")
    with pytest.raises(TypeError, match="target_modules"):
        target_linears(model, [3])


def test_ambiguous_stacks_ask_for_blocks():
    class Tower(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList(nn.Sequential(nn.Linear(3, 3)) for _ in range(2))

    class TwoTowers(nn.Module):
        def __init__(self):
            super().__init__()
            self.vision, self.text = Tower(), Tower()

    with pytest.raises(ValueError, match="several block stacks .*vision.layers.*text.layers"):
        find_blocks(TwoTowers())
    assert find_blocks(TwoTowers(), blocks="text.layers").layers_pattern == "layers"


def test_gpt2_conv1d_becomes_a_linear_view_without_copy():
    torch.manual_seed(3)
    conv = Conv1D(13, 9)  # out 13, in 9
    nn.init.normal_(conv.bias)
    linear = as_linear(conv)
    assert isinstance(linear, Conv1DAsLinear) and isinstance(linear, nn.Linear)
    assert linear.weight.data_ptr() == conv.weight.data_ptr() and linear.bias is conv.bias
    assert linear_shape(conv) == linear_shape(linear) == (13, 9)
    x = torch.randn(2, 5, 9)
    torch.testing.assert_close(linear(x), conv(x))
    back = linear.to_conv1d()
    assert back.weight.data_ptr() == conv.weight.data_ptr()
    torch.testing.assert_close(back(x), conv(x), rtol=0, atol=0)
    with pytest.raises(TypeError, match="cannot wrap a ReLU"):
        as_linear(nn.ReLU())


def test_t5_with_explicit_blocks_gets_default_targets_there():
    """Issue 10.11: with blocks= given, the default targets come from that stack (T5 has two), and no error
    asks the user to pass the blocks= they passed."""
    from act_lora_fast import apply_act_lora
    from act_lora_fast.model.inject import lora_modules

    config = transformers.T5Config(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, vocab_size=50)
    torch.manual_seed(0)
    model = transformers.T5ForConditionalGeneration(config)
    assert default_target_modules(model, blocks="decoder.block") == ["k", "o", "q", "v", "wi", "wo"]
    with pytest.raises(ValueError, match="several block stacks"):
        default_target_modules(model)  # ambiguous without blocks=: then asking for it is right
    apply_act_lora(model, [1], blocks="decoder.block", verbose=False)
    names = sorted(lora_modules(model))
    assert names and all(name.startswith("decoder.block.1.") for name in names)
    assert model.act_lora_config.block_path == "decoder.block"
