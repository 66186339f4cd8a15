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


# ---------------------------------------------------------------------------------------------- issue 10
def _lora_config_json(path):
    return json.loads((path / "adapter_config.json").read_text())


def test_load_adapter_gives_new_layers_the_models_eval_mode(tmp_path):
    """Issue 10.1: with lora_dropout > 0, a loaded model in eval() must be deterministic."""
    base = tiny_model("llama", layers=2)
    trained = apply_act_lora(copy.deepcopy(base).train(), [0, 1], r=4, dropout=0.3, verbose=False)
    _randomize(trained, 5)
    save_adapter(trained, tmp_path)
    model = load_adapter(copy.deepcopy(base).eval(), tmp_path)
    assert not any(layer.training for layer in lora_modules(model).values())
    batch = {k: v for k, v in token_batch(seed=2).items() if k != "labels"}
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, model(**batch).logits, rtol=0, atol=0)
    model = load_adapter(copy.deepcopy(base).train(), tmp_path)  # and a model in train() gets training layers
    assert all(layer.training for layer in lora_modules(model).values())


def test_load_adapter_onto_existing_layers_replaces_their_whole_configuration(tmp_path):
    """Issue 10.3: scaling, dropout and rslora come from the adapter, and merged layers are unmerged first."""
    from act_lora_fast import remove_act_lora

    base = tiny_model("llama", layers=2)
    peft_config = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, use_rslora=True,
                                  target_modules=["q_proj", "v_proj"], modules_to_save=["score"])
    theirs = peft.get_peft_model(copy.deepcopy(base), peft_config)
    _randomize(theirs, 6)
    theirs.save_pretrained(str(tmp_path))
    batch = token_batch(seed=3)
    expected = _logits(load_adapter(copy.deepcopy(base), tmp_path), batch)

    ours = apply_act_lora(copy.deepcopy(base), [0, 1], target_modules=["q_proj", "v_proj"], r=4, alpha=32,
                          modules_to_save=["score"], verbose=False)
    _randomize(ours, 7)
    for layer in lora_modules(ours).values():
        layer.merge()
    load_adapter(ours, tmp_path)
    torch.testing.assert_close(_logits(ours, batch), expected, rtol=1e-5, atol=1e-5)
    for layer in lora_modules(ours).values():
        assert not layer.merged and layer.lora_dropout == 0.1 and layer.scaling == pytest.approx(8 / 2)
    assert ours.act_lora_config.alpha == 8 and ours.act_lora_config.use_rslora
    assert ours.act_lora_config.dropout == pytest.approx(0.1)
    remove_act_lora(ours)  # the base weights are the pretrained ones again: nothing of the merge is left
    for (name, before), after in zip(base.named_parameters(), ours.parameters()):
        if "score" not in name:
            torch.testing.assert_close(after, before, rtol=0, atol=1e-6, msg=name)


def test_save_replaces_the_adapter_folder_as_one_unit(tmp_path, monkeypatch):
    """Issue 10.4: a save that fails halfway leaves the earlier adapter whole, and no temporary files."""
    model = apply_act_lora(tiny_model("llama", layers=2), [1], r=2, verbose=False)
    _randomize(model, 8)
    path = tmp_path / "adapter"
    save_adapter(model, path)
    before = {name: (path / name).read_bytes() for name in os.listdir(path)}
    _randomize(model, 9)
    model.act_lora_config.alpha = 4

    def broken_dump(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(json, "dump", broken_dump)  # the weights are written, the config fails
    with pytest.raises(OSError, match=f"cannot write the adapter folder {path}"):
        save_adapter(model, path)
    monkeypatch.undo()
    assert {name: (path / name).read_bytes() for name in os.listdir(path)} == before
    assert sorted(os.listdir(tmp_path)) == ["adapter"]  # no temporary folder left behind
    save_adapter(model, path)  # the swap: new pair in place, the retired folder gone
    assert sorted(os.listdir(tmp_path)) == ["adapter"] and _lora_config_json(path)["lora_alpha"] == 4
    assert (path / "adapter_model.safetensors").read_bytes() != before["adapter_model.safetensors"]


def test_load_refuses_weights_and_config_from_different_saves(tmp_path):
    """Issue 10.4: new weights beside an older config (a save cut short) are refused, not loaded."""
    base = tiny_model("llama", layers=2)
    model = apply_act_lora(copy.deepcopy(base), [1], r=2, alpha=16, verbose=False)
    _randomize(model, 10)
    save_adapter(model, tmp_path / "old")
    model.act_lora_config.alpha = 8
    save_adapter(model, tmp_path / "new")
    (tmp_path / "old" / "adapter_model.safetensors").write_bytes(
        (tmp_path / "new" / "adapter_model.safetensors").read_bytes())
    fresh = copy.deepcopy(base)
    with pytest.raises(ValueError, match=r"saved with lora_alpha=8, but .* says lora_alpha=16.*different saves"):
        load_adapter(fresh, tmp_path / "old")
    assert not lora_modules(fresh)


def test_peft_loads_adapters_with_the_fingerprint_and_extra_files_are_kept(tmp_path):
    """Issue 10.4: the weights' metadata PEFT ignores; a folder with other files keeps them."""
    from safetensors import safe_open

    base = tiny_model("bert", layers=2)
    ours = apply_act_lora(copy.deepcopy(base), [0], r=3, alpha=6, modules_to_save=["classifier"], verbose=False)
    _randomize(ours, 11)
    (tmp_path / "README.md").write_text("my notes\n")
    save_adapter(ours, tmp_path)
    save_adapter(ours, tmp_path)
    assert (tmp_path / "README.md").read_text() == "my notes\n"
    assert sorted(os.listdir(tmp_path)) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    with safe_open(str(tmp_path / "adapter_model.safetensors"), framework="pt") as handle:
        assert json.loads(handle.metadata()["act_lora_adapter_config"])["lora_alpha"] == 6
    batch = token_batch(seed=4)
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path))
    torch.testing.assert_close(_logits(theirs, batch), _logits(ours, batch), rtol=1e-5, atol=1e-5)


def test_saved_adapter_files_and_folder_get_the_umask_mode(tmp_path):
    """Issue 10.16: 0644 files and a 0755 folder under umask 022, as any file the user writes."""
    model = apply_act_lora(tiny_model("llama", layers=2), [0], r=2, verbose=False)
    previous = os.umask(0o022)
    try:
        save_adapter(model, tmp_path / "a")
    finally:
        os.umask(previous)
    assert (tmp_path / "a").stat().st_mode & 0o777 == 0o755
    for name in os.listdir(tmp_path / "a"):
        assert (tmp_path / "a" / name).stat().st_mode & 0o777 == 0o644, name


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_peft_seq_cls_adapters_load_as_peft_loads_them(kind, tmp_path):
    """Issue 10.10: task_type="SEQ_CLS" lists modules_to_save ["classifier", "score"]; BERT has no score and
    GPT-2 no classifier. PEFT skips the entry that matches nothing, and so do we."""
    base = tiny_model(kind, layers=2)
    targets = ["query", "value"] if kind == "bert" else ["c_attn"]
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8,
                                                                      target_modules=targets))
    _randomize(theirs, 12)
    theirs.save_pretrained(str(tmp_path))
    assert set(_lora_config_json(tmp_path)["modules_to_save"]) >= {"classifier", "score"}
    ours = load_adapter(copy.deepcopy(base), tmp_path)
    head = "classifier" if kind == "bert" else "score"
    assert ours.act_lora_config.modules_to_save == [head]
    assert all(p.requires_grad for p in getattr(ours, head).parameters())
    batch = token_batch(seed=5)
    torch.testing.assert_close(_logits(ours, batch), _logits(theirs, batch), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("key,value", [("use_bdlora", {"block_size": 4}), ("kasa_config", {"k": 2}),
                                       ("use_dora", True), ("rank_pattern", {"q_proj": 4}),
                                       ("a_future_lora_option", 3), ("init_lora_weights", "pissa"),
                                       ("init_lora_weights", "loftq")])
def test_unsupported_peft_options_are_refused_by_name(saved, key, value):
    """Issue 10.15: every LoraConfig option we don't implement, set to a non-default value, is named."""
    base, path = saved
    config = _lora_config_json(path)
    (path / "adapter_config.json").write_text(json.dumps({**config, key: value}))
    model = copy.deepcopy(base)
    with pytest.raises(ValueError, match=rf"adapter_config.json: {key}="):
        load_adapter(model, path)
    assert not lora_modules(model)


def test_default_valued_peft_options_still_load(saved):
    base, path = saved
    config = _lora_config_json(path)
    extra = {"use_bdlora": None, "kasa_config": None, "arrow_config": None, "ensure_weight_tying": False,
             "megatron_core": "megatron.core", "qalora_group_size": 16, "init_lora_weights": "gaussian",
             "runtime_config": {"ephemeral_gpu_offload": False}, "peft_version": "0.21.2"}
    (path / "adapter_config.json").write_text(json.dumps({**config, **extra}))
    assert lora_modules(load_adapter(copy.deepcopy(base), path))


def test_meta_device_models_are_refused(tmp_path, saved):
    """Issue 10.15: a model built without weights would get LoRA layers (or loaded weights) holding nothing."""
    base, path = saved
    with torch.device("meta"):
        meta = tiny_model("llama", layers=2)
    with pytest.raises(ValueError, match="meta device"):
        apply_act_lora(meta, [0], verbose=False)
    with pytest.raises(ValueError, match="meta device"):
        load_adapter(meta, path)
    assert not lora_modules(meta)
