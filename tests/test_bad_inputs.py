"""Bad input to the public API and the CLI: a clear exception naming the problem, raised before any work."""
import json
import re

import pytest
import torch

import act_lora_fast as A
from tests import models
from act_lora_fast.measure import cost as cost_module
from act_lora_fast.measure import harness as scaling_module
from act_lora_fast.model.hf import resolve_model_path
from act_lora_fast.cli import main
from act_lora_fast.measure.harness import BenchSettings
from act_lora_fast.train.demo import DemoConfig
from act_lora_fast.data.glue import Example, TokenizedDataset

pytestmark = pytest.mark.usefixtures("one_thread")

IDS = torch.randint(0, 97, (2, 5), generator=torch.Generator().manual_seed(0))
BATCH = {"input_ids": IDS, "attention_mask": torch.ones_like(IDS), "labels": torch.tensor([0, 1])}


def tiny_bert():
    return models.tiny_bert().eval()


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("adapter") / "ad"
    A.save_adapter(A.apply_act_lora(tiny_bert(), [0, 2], modules_to_save=["classifier"], verbose=False), path)
    return path


def _write(path, data):
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


# ---------------------------------------------------------------------------------------------- profiling
@pytest.mark.parametrize("batch, error, match", [
    ({"input_ids": IDS[0]}, ValueError, r"input_ids has shape \(5,\)"),
    ({"input_ids": IDS[:, :0]}, ValueError, r"input_ids has shape \(2, 0\); expected a non-empty"),
    ({"input_ids": IDS.tolist()}, TypeError, "input_ids must be a tensor"),
    ({"input_ids": IDS.float()}, TypeError, "integer token ids, got dtype torch.float32"),
    ({"input_ids": IDS + 97}, ValueError, "outside the model's vocabulary of 97"),
    ({"input_ids": IDS, "attention_mask": torch.ones(5)}, ValueError, r"attention_mask has shape \(5,\)"),
])
@pytest.mark.parametrize("profile", ["activations", "gradients"])
def test_profilers_check_the_tokens(profile, batch, error, match):
    batch = {**batch, "labels": torch.tensor([0, 1])}
    with pytest.raises(error, match=match):
        if profile == "activations":
            A.profile_activations(tiny_bert(), [batch], progress=False)
        else:
            A.profile_gradients(tiny_bert(), [batch], progress=False)


@pytest.mark.parametrize("labels, error, match", [
    (torch.tensor([5, 0]), ValueError, r"holds class 5, but the model has num_labels=2"),
    ("positive", TypeError, r"batch\['labels'\] must be a tensor or a list of numbers"),
])
def test_profile_gradients_checks_labels(labels, error, match):
    with pytest.raises(error, match=match):
        A.profile_gradients(tiny_bert(), [{**BATCH, "labels": labels}], progress=False)


# ---------------------------------------------------------------------------------------------- LayerScores
@pytest.mark.parametrize("fields, error, match", [
    ({"module_scores": [1, 2]}, TypeError, "module_scores must be a dict, got list"),
    ({"module_scores": {"a": "x"}}, TypeError, r"module_scores\['a'\] must be a number"),
    ({"module_shapes": {"a": 5}}, ValueError, r"module_shapes\['a'\] must be \[out_features, in_features\]"),
    ({"module_shapes": {"a": [1, 2, 3]}}, ValueError, r"module_shapes\['a'\]"),
    ({"meta": [1]}, TypeError, "meta must be a dict"),
    ({"metric": 5}, TypeError, "metric must be a str"),
    ({"num_tokens": "x"}, TypeError, "num_tokens must be an int >= 0"),
])
def test_layer_scores_fields(fields, error, match):
    with pytest.raises(error, match=match):
        A.LayerScores([1.0, 2.0], **fields)


def test_layer_scores_files(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a directory; expected a scores JSON file"):
        A.LayerScores.from_json(tmp_path)
    with pytest.raises(ValueError, match=r"bin\.json: not UTF-8 text"):
        A.LayerScores.from_json(_write(tmp_path / "bin.json", b"\xff\xfe\x00"))
    bad = _write(tmp_path / "shapes.json", {"scores": [1.0], "module_shapes": {"a": 3}})
    with pytest.raises(ValueError, match=r"shapes\.json: module_shapes\['a'\]"):
        A.LayerScores.from_json(bad)
    with pytest.raises(IsADirectoryError, match="is a directory; expected a file path"):
        A.LayerScores([1.0]).to_json(tmp_path)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"layers": [99]}, ValueError, "block index 99 does not exist"),
    ({"layers": ["a"]}, TypeError, "layers must hold ints"),
    ({"layers": [0], "r": "8"}, TypeError, "r must be an int >= 1"),
    ({"layers": [0], "r": 0}, ValueError, "r must be an int >= 1"),
])
def test_lora_parameters_checks_layers_and_rank(kwargs, error, match):
    scores = A.LayerScores([1.0, 2.0], block_path="e", module_shapes={"e.0.q": [4, 4], "e.1.q": [4, 4]})
    with pytest.raises(error, match=match):
        scores.lora_parameters(**kwargs)


# ---------------------------------------------------------------------------------------------- adapters
def test_apply_act_lora_modules_to_save_type():
    with pytest.raises(TypeError, match="modules_to_save must be a module name or a list of them, got int"):
        A.apply_act_lora(tiny_bert(), [0], modules_to_save=5, verbose=False)


def test_save_adapter_paths(tmp_path):
    model = A.apply_act_lora(tiny_bert(), [0], verbose=False)
    with pytest.raises(NotADirectoryError, match="is a file; save_adapter writes a folder"):
        A.save_adapter(model, _write(tmp_path / "file.txt", "x"))
    with pytest.raises(TypeError, match="path must be a folder path"):
        A.save_adapter(model, None)
    with pytest.raises(TypeError, match="base_model_name_or_path must be a str or None"):
        A.save_adapter(model, tmp_path / "half", base_model_name_or_path=object())
    assert not (tmp_path / "half").exists()  # nothing half-written


def test_load_adapter_paths(adapter_dir):
    with pytest.raises(NotADirectoryError, match="is a file; pass the adapter folder"):
        A.load_adapter(tiny_bert(), adapter_dir / "adapter_config.json")
    with pytest.raises(TypeError, match="path must be an adapter folder path"):
        A.load_adapter(tiny_bert(), None)


@pytest.mark.parametrize("key, value", [
    ("target_modules", "["), ("exclude_modules", "("), ("exclude_modules", 5), ("layers_to_transform", "ab"),
    ("layers_to_transform", ["0"]), ("layers_pattern", 5), ("modules_to_save", "classifier"),
    ("modules_to_save", [3]), ("use_rslora", "yes"),
])
def test_load_adapter_checks_config_fields(adapter_dir, tmp_path, key, value):
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    _write(tmp_path / "adapter_config.json", {**config, key: value})
    (tmp_path / "adapter_model.safetensors").write_bytes((adapter_dir / "adapter_model.safetensors").read_bytes())
    model = tiny_bert()
    with pytest.raises(ValueError, match=rf"adapter_config\.json: {key}"):
        A.load_adapter(model, tmp_path)
    assert not hasattr(model, "act_lora_config")


# ---------------------------------------------------------------------------------------------- cost model
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
    with pytest.raises(ValueError, match=r"cm\.json: not UTF-8 text"):
        A.CostModel.load(_write(tmp_path / "cm.json", b"\xff\xfe\x00"))
    with pytest.raises(TypeError, match=r"coef\.json: coefficients must be a dict"):
        A.CostModel.load(_write(tmp_path / "coef.json", {"num_blocks": 3, "coefficients": [1]}))
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
        A.estimate_cost(tiny_bert(), [99])


@pytest.mark.parametrize("kwargs, error, match", [
    ({"settings": {"r": 4}}, TypeError, "settings must be a BenchSettings, got dict"),
    ({"batch": [BATCH]}, TypeError, "batch must be a dict of tensors"),
    ({"batch": {"input_ids": IDS}}, ValueError, "batch needs a 'labels' tensor"),
    ({"batch": {"input_ids": IDS[0], "labels": BATCH["labels"]}}, ValueError,
     r"batch\['input_ids'\] must be a non-empty \(batch, sequence\) integer tensor"),
])
def test_calibrate_cost_model_checks_settings_and_batch(kwargs, error, match):
    with pytest.raises(error, match=match):
        A.calibrate_cost_model(tiny_bert(), progress=False, rounds=1, **kwargs)


# ---------------------------------------------------------------------------------------------- scaling
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

    monkeypatch.setattr(scaling_module, "measure_variants", measure)
    with pytest.raises(error, match=match):
        A.compare_with_peft(tiny_bert(), batch, **{"ranking": [0, 1, 2], "progress": False, **kwargs})


# ---------------------------------------------------------------------------------------------- training
@pytest.mark.parametrize("fields, error, match", [
    ({"dropout": "0.1"}, TypeError, "dropout must be a number"),
    ({"warmup_ratio": "x"}, TypeError, "warmup_ratio must be a number"),
    ({"weight_decay": "x"}, TypeError, "weight_decay must be a number"),
    ({"loraplus_lr_ratio": "2"}, TypeError, "loraplus_lr_ratio must be a number or None"),
    ({"max_grad_norm": "1"}, TypeError, "max_grad_norm must be a number or None"),
    ({"fraction": True}, TypeError, r"fraction must be a number or None, got True"),
    ({"backend": "cuda"}, ValueError, "unknown backend 'cuda'"),
    ({"target_modules": []}, TypeError, "target_modules must be"),
    ({"device": "gpu"}, ValueError, "device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'gpu'"),
    ({"progress": "no"}, TypeError, "progress must be a bool"),
    ({"modules_to_save": [3]}, TypeError, "modules_to_save must be None or a list of module names"),
])
def test_train_config_fields(fields, error, match):
    with pytest.raises(error, match=match):
        A.TrainConfig(model="m", **fields)


def test_train_config_takes_one_module_name():
    assert A.TrainConfig(model="m", modules_to_save="classifier").modules_to_save == ["classifier"]


def test_finetune_argument_types():
    config = A.TrainConfig(model="m", progress=False)
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module"):
        A.finetune(config, model="m", tokenizer="t")
    with pytest.raises(TypeError, match="layer_scores must be a dict"):
        A.finetune(config, layer_scores=[1])


class _Tokenizer:
    pad_token_id = 0

    def __call__(self, texts_a, texts_b=None, truncation=True, max_length=None):
        return {"input_ids": [[1, 2, 3] for _ in texts_a], "attention_mask": [[1, 1, 1] for _ in texts_a]}


@pytest.mark.parametrize("model, eval_sets, kwargs, error, match", [
    ("m", None, {}, TypeError, r"model must be a torch\.nn\.Module"),
    (None, [1], {}, TypeError, r"eval_sets must be a dict \{split name: TokenizedDataset\}, got list"),
    (None, {}, {}, ValueError, "eval_sets is empty"),
    (None, {"dev": [Example("a", None, 0)]}, {}, TypeError, r"eval_sets\['dev'\] must be a TokenizedDataset"),
    (None, None, {"batch_size": 0}, ValueError, "batch_size must be an int >= 1"),
])
def test_evaluate_arguments(model, eval_sets, kwargs, error, match):
    model = tiny_bert() if model is None else model
    if eval_sets is None:
        eval_sets = {"dev": TokenizedDataset([Example("a", None, 0), Example("b", None, 1)], _Tokenizer(), 16)}
    with pytest.raises(error, match=match):
        A.evaluate(model, eval_sets, "sst2", **kwargs)


@pytest.mark.parametrize("kwargs, match", [
    ({"fractions": 0.5}, "fractions must be a list, got 0.5"),
    ({"baselines": "gradient"}, "baselines must be a list, got 'gradient'"),
    ({"profiles": [1]}, "profiles must be a dict"),
    ({"on_run": 5}, "on_run must be a callable"),
])
def test_run_compare_argument_types(kwargs, match):
    with pytest.raises(TypeError, match=match):
        A.run_compare(A.TrainConfig(model="m", progress=False), **kwargs)


def test_load_glue_data_dir_type():
    with pytest.raises(TypeError, match="data_dir must be a folder path"):
        A.load_glue("sst2", 5)


def test_demo_config_checks_fraction_up_front():
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\], got 3"):
        DemoConfig(fraction=3)


# ---------------------------------------------------------------------------------------------- CLI
def test_resolve_model_path_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        resolve_model_path(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match=r"model folder not found: .*file\.txt \(it is a file\)"):
        resolve_model_path(str(_write(tmp_path / "file.txt", "x")))


@pytest.mark.parametrize("argv, match", [
    (["profile", "{tmp}/no-model", "--no-progress"], "model folder not found"),
    (["profile", "not-a-cached-hub-model", "--no-progress"], "act-lora profile: error: "),
    (["profile", "minilm", "--out", "{tmp}", "--no-progress"], "--out .* is a directory; give a file path"),
    (["select", "{tmp}", "--k", "1"], "is a directory; expected a scores JSON file"),
    (["select", "{tmp}/bin.json", "--k", "1"], r"bin\.json: not UTF-8 text"),
])
def test_cli_reports_bad_input_without_a_traceback(tmp_path, capsys, argv, match):
    _write(tmp_path / "bin.json", b"\xff\xfe\x00")
    assert main([arg.replace("{tmp}", str(tmp_path)) for arg in argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert re.search(match, err), err


def test_bench_settings_default_is_not_replaced_by_falsy_settings():
    # an empty dict used to be taken for "no settings" and silently replaced by the defaults
    with pytest.raises(TypeError, match="settings must be a BenchSettings"):
        scaling_module.check_settings({})
    assert isinstance(scaling_module.check_settings(None), BenchSettings)
