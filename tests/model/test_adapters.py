"""PEFT-format adapters: round trips with real peft in both directions, and loads that must refuse."""
import copy
import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file
from tests.models import minilm_path, tiny_bert, tiny_model, token_batch  # noqa: F401

import act_lora_fast as A
from act_lora_fast import apply_act_lora, load_adapter, save_adapter
from act_lora_fast.model.inject import lora_modules

pytestmark = pytest.mark.usefixtures("one_thread")

peft = pytest.importorskip("peft")


def _randomize(model, seed):
    """Non-trivial adapter and head weights, so a wrong key or transposition changes the logits."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)


def _logits(model, batch):
    model.eval()
    with torch.no_grad():
        return model(**{k: v for k, v in batch.items() if k != "labels"}).logits


@pytest.fixture(scope="module")
def minilm_base():
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = minilm_path()
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    batch = dict(tokenizer(["An adapter round trip.", "Padding makes this batch ragged, on purpose, twice."],
                           padding=True, return_tensors="pt"))
    return model, batch


def test_minilm_ours_to_peft(minilm_base, tmp_path):
    base, batch = minilm_base
    ours = apply_act_lora(copy.deepcopy(base), [1, 4], r=4, alpha=8, modules_to_save=["classifier"],
                          verbose=False)
    _randomize(ours, 1)
    save_adapter(ours, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["layers_to_transform"] == [1, 4]
    assert config["layers_pattern"] == "layer" and config["target_modules"] == ["query", "key", "value", "dense"]
    assert config["modules_to_save"] == ["classifier"] and config["base_model_name_or_path"].endswith("model")
    keys = set(load_file(tmp_path / "adapter_model.safetensors"))
    assert "base_model.model.bert.encoder.layer.4.attention.self.query.lora_A.weight" in keys
    assert "base_model.model.classifier.weight" in keys and len(keys) == 2 * 12 + 2
    assert sorted(os.listdir(tmp_path)) == ["adapter_config.json", "adapter_model.safetensors"]

    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path))
    expected = _logits(ours, batch)
    assert not torch.allclose(expected, _logits(base, batch), atol=1e-3)
    torch.testing.assert_close(_logits(theirs, batch), expected, rtol=1e-5, atol=1e-5)


def test_minilm_peft_to_ours(minilm_base, tmp_path):
    base, batch = minilm_base
    config = peft.LoraConfig(r=6, lora_alpha=12, target_modules=["query", "value", "output.dense"],
                             layers_to_transform=[0, 5], layers_pattern="layer", modules_to_save=["classifier"])
    theirs = peft.get_peft_model(copy.deepcopy(base), config)
    _randomize(theirs, 2)
    theirs.save_pretrained(str(tmp_path))
    ours = load_adapter(copy.deepcopy(base), tmp_path)
    assert len(lora_modules(ours)) == 2 * 4  # query, value, attention.output.dense, output.dense
    assert ours.act_lora_config.layers == [0, 5] and ours.act_lora_config.r == 6
    torch.testing.assert_close(_logits(ours, batch), _logits(theirs, batch), rtol=1e-5, atol=1e-5)
    # loading into a model that already has the same layers replaces only the weights
    again = load_adapter(ours, tmp_path)
    assert again is ours and len(lora_modules(ours)) == 8


# the Llama regex picks different linears per block: no suffix list + layers_to_transform says that, so the
# saved config lists the exact module names instead
@pytest.mark.parametrize("kind,targets", [("gpt2", None),
                                          ("llama", r".*layers\.0\.self_attn\.q_proj|.*layers\.2\.mlp\.down_proj")])
def test_tiny_models_round_trip_both_ways(kind, targets, tmp_path):
    base = tiny_model(kind, layers=3)
    batch = token_batch(seed=9)
    ours = apply_act_lora(copy.deepcopy(base), [0, 2], target_modules=targets, r=3, alpha=5,
                          modules_to_save=["score"], verbose=False)
    _randomize(ours, 3)
    save_adapter(ours, tmp_path / "ours")
    config = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    assert config["fan_in_fan_out"] is (kind == "gpt2")
    if kind == "llama":
        assert config["target_modules"] == ["model.layers.0.self_attn.q_proj", "model.layers.2.mlp.down_proj"]
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path / "ours"))
    expected = _logits(ours, batch)
    torch.testing.assert_close(_logits(theirs, batch), expected, rtol=1e-5, atol=1e-5)

    theirs.save_pretrained(str(tmp_path / "theirs"))  # and back: PEFT's own file into a fresh model
    back = load_adapter(copy.deepcopy(base), tmp_path / "theirs")
    assert sorted(lora_modules(back)) == sorted(lora_modules(ours))
    torch.testing.assert_close(_logits(back, batch), expected, rtol=1e-5, atol=1e-5)


@pytest.fixture
def saved(tmp_path):
    base = tiny_model("llama", layers=2)
    model = apply_act_lora(copy.deepcopy(base), [1], r=2, modules_to_save=["score"], verbose=False)
    _randomize(model, 4)
    save_adapter(model, tmp_path)
    return base, tmp_path


def _rewrite(path, change):
    tensors = load_file(path / "adapter_model.safetensors")
    change(tensors)
    save_file(tensors, path / "adapter_model.safetensors")


def test_refuses_bad_adapters_before_touching_the_model(saved):
    base, path = saved
    weights = path / "adapter_model.safetensors"
    config_file = path / "adapter_config.json"
    config = json.loads(config_file.read_text())
    key = "base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight"
    cases = [
        (lambda: _rewrite(path, lambda t: t.pop(key)), ValueError, r"missing key\(s\) \['" + key),
        (lambda: _rewrite(path, lambda t: t.update(extra=torch.ones(2))), ValueError, r"unexpected key\(s\) \['extra'"),
        (lambda: _rewrite(path, lambda t: t.update({key: torch.ones(3, 48)})), ValueError,
         r"q_proj.lora_A.weight has shape \(3, 48\), the model needs \(2, 48\)"),
        (lambda: weights.write_bytes(b"\x00garbage" * 10), ValueError, "not a readable safetensors file"),
        (lambda: config_file.write_text(json.dumps({**config, "peft_type": "IA3"})), ValueError,
         "peft_type is 'IA3'"),
        (lambda: config_file.write_text(json.dumps({**config, "use_dora": True})), ValueError, "use_dora"),
        (lambda: config_file.write_text('{"peft_type": "LORA",\n'), ValueError, "adapter_config.json: not valid JSON"),
        (lambda: weights.unlink(), FileNotFoundError, "no adapter_model.safetensors"),
    ]
    pristine_weights, pristine_config = weights.read_bytes(), config_file.read_text()
    for damage, error, match in cases:
        weights.write_bytes(pristine_weights)
        config_file.write_text(pristine_config)
        damage()
        model = copy.deepcopy(base)
        with pytest.raises(error, match=match):
            load_adapter(model, path)
        assert not lora_modules(model)
    weights.unlink(missing_ok=True)
    (path / "adapter_model.bin").write_bytes(b"pickle")
    config_file.write_text(pristine_config)
    with pytest.raises(FileNotFoundError, match="pickled files are not loaded"):
        load_adapter(copy.deepcopy(base), path)
    with pytest.raises(FileNotFoundError, match="adapter folder not found"):
        load_adapter(copy.deepcopy(base), path / "nowhere")


def test_save_needs_an_adapter_and_leaves_no_temp_files(tmp_path):
    model = tiny_model("qwen2", layers=2)
    with pytest.raises(ValueError, match="no Act-LoRA adapter to save"):
        save_adapter(model, tmp_path)
    apply_act_lora(model, [0], verbose=False)
    save_adapter(model, tmp_path, base_model_name_or_path="tiny/qwen2")
    save_adapter(model, tmp_path, base_model_name_or_path="tiny/qwen2")  # overwrite in place
    assert sorted(os.listdir(tmp_path)) == ["adapter_config.json", "adapter_model.safetensors"]
    assert json.loads((tmp_path / "adapter_config.json").read_text())["base_model_name_or_path"] == "tiny/qwen2"
    layer = next(iter(lora_modules(model).values()))
    layer.merge()
    with pytest.raises(ValueError, match="is merged"):
        save_adapter(model, tmp_path)


# ---------------------------------------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("adapter") / "ad"
    A.save_adapter(A.apply_act_lora(tiny_bert().eval(), [0, 2], modules_to_save=["classifier"], verbose=False),
                   path)
    return path


def test_save_adapter_paths(tmp_path):
    model = A.apply_act_lora(tiny_bert().eval(), [0], verbose=False)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file; save_adapter writes a folder"):
        A.save_adapter(model, tmp_path / "file.txt")
    with pytest.raises(TypeError, match="path must be a folder path"):
        A.save_adapter(model, None)
    with pytest.raises(TypeError, match="base_model_name_or_path must be a str or None"):
        A.save_adapter(model, tmp_path / "half", base_model_name_or_path=object())
    assert not (tmp_path / "half").exists()  # nothing half-written


def test_load_adapter_paths(adapter_dir):
    with pytest.raises(NotADirectoryError, match="is a file; pass the adapter folder"):
        A.load_adapter(tiny_bert().eval(), adapter_dir / "adapter_config.json")
    with pytest.raises(TypeError, match="path must be an adapter folder path"):
        A.load_adapter(tiny_bert().eval(), None)


@pytest.mark.parametrize("key, value", [
    ("target_modules", "["), ("exclude_modules", "("), ("exclude_modules", 5), ("layers_to_transform", "ab"),
    ("layers_to_transform", ["0"]), ("layers_pattern", 5), ("modules_to_save", "classifier"),
    ("modules_to_save", [3]), ("use_rslora", "yes"),
])
def test_load_adapter_checks_config_fields(adapter_dir, tmp_path, key, value):
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    (tmp_path / "adapter_config.json").write_text(json.dumps({**config, key: value}))
    (tmp_path / "adapter_model.safetensors").write_bytes((adapter_dir / "adapter_model.safetensors").read_bytes())
    model = tiny_bert().eval()
    with pytest.raises(ValueError, match=rf"adapter_config\.json: {key}"):
        A.load_adapter(model, tmp_path)
    assert not hasattr(model, "act_lora_config")
