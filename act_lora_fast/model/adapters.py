"""Adapters in PEFT's on-disk format: ``adapter_config.json`` + ``adapter_model.safetensors``.

What peft 0.21's ``save_pretrained`` writes, and so what we write and read:
- LoRA weights under ``base_model.model.<module path>.lora_A.weight`` / ``.lora_B.weight`` (no adapter name);
- each ``modules_to_save`` module's parameters under ``base_model.model.<module path>.<param>``;
- the config's ``target_modules`` + ``layers_to_transform`` + ``layers_pattern`` select the modules.

``peft.PeftModel.from_pretrained(base, path)`` on our adapter reproduces our model, and `load_adapter` on
an adapter PEFT saved reproduces PEFT's. Files are written atomically and never unpickled.
"""
import json
import os
import re

import torch

from .._checks import check_lora_hyperparameters
from .._io import atomic_write
from .anatomy import Conv1DAsLinear, find_blocks, is_linear_like, linear_shape, unwrap_model
from .inject import ActLoRAConfig, inject_modules, lora_modules, match_modules_to_save
from .targets import peft_matches

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PREFIX = "base_model.model."
# LoraConfig features whose non-default values change the math; we refuse them instead of ignoring them.
_UNSUPPORTED = {"use_dora": False, "lora_bias": False, "rank_pattern": {}, "alpha_pattern": {},
                "layer_replication": None, "target_parameters": None, "trainable_token_indices": None,
                "use_qalora": False, "alora_invocation_tokens": None}


def _peft_targets(model, config):
    return [name for name, module in model.named_modules()
            if name and is_linear_like(module) and peft_matches(config, name)]


# ---------------------------------------------------------------------------------------------- saving
def _target_modules_for_peft(model, injected, cfg):
    """The config's target list if PEFT would match exactly our modules with it, else the full names."""
    candidate = {"target_modules": list(cfg.target_modules), "layers_to_transform": list(cfg.layers),
                 "layers_pattern": cfg.layers_pattern, "modules_to_save": cfg.modules_to_save}
    if set(_peft_targets(model, candidate)) == set(injected):
        return list(cfg.target_modules)
    return sorted(injected)  # exact names: PEFT matches them directly


def save_adapter(model, path, *, base_model_name_or_path=None):
    """Write the Act-LoRA adapter of `model` to folder `path` in PEFT's format."""
    from safetensors.torch import save_file

    model = unwrap_model(model)
    cfg = getattr(model, "act_lora_config", None)
    if not isinstance(cfg, ActLoRAConfig):
        raise ValueError("model has no Act-LoRA adapter to save; call apply_act_lora (or load_adapter) first")
    modules = lora_modules(model)
    if not modules:
        raise ValueError("model has act_lora_config but no FastActLoRALinear layers (was it removed?)")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a folder path (str or os.PathLike), got {type(path).__name__}")
    if os.path.exists(path) and not os.path.isdir(path):
        raise NotADirectoryError(f"{os.fspath(path)} is a file; save_adapter writes a folder "
                                 f"({CONFIG_NAME} + {WEIGHTS_NAME})")
    if base_model_name_or_path is not None and not isinstance(base_model_name_or_path, (str, os.PathLike)):
        raise TypeError(f"base_model_name_or_path must be a str or None, got "
                        f"{type(base_model_name_or_path).__name__}")
    if base_model_name_or_path is None:
        base_model_name_or_path = getattr(getattr(model, "config", None), "_name_or_path", None) or None
    elif isinstance(base_model_name_or_path, os.PathLike):
        base_model_name_or_path = os.fspath(base_model_name_or_path)
    tensors = {}
    for name, module in modules.items():
        if module.merged:
            raise ValueError(f"{name} is merged; unmerge() before saving so the adapter holds only the update")
        tensors[f"{PREFIX}{name}.lora_A.weight"] = module.lora_A.weight
        tensors[f"{PREFIX}{name}.lora_B.weight"] = module.lora_B.weight
    for name, module in match_modules_to_save(model, cfg.modules_to_save).items():
        for param_name, tensor in module.state_dict().items():
            tensors[f"{PREFIX}{name}.{param_name}"] = tensor
    # copies: safetensors refuses tensors that share storage (a tied head in modules_to_save)
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}

    config = {
        "peft_type": "LORA", "task_type": None, "auto_mapping": None,
        "base_model_name_or_path": base_model_name_or_path, "revision": None,
        "r": cfg.r, "lora_alpha": cfg.alpha, "lora_dropout": cfg.dropout, "use_rslora": cfg.use_rslora,
        "target_modules": _target_modules_for_peft(model, list(modules), cfg),
        "layers_to_transform": list(cfg.layers), "layers_pattern": cfg.layers_pattern,
        "modules_to_save": list(cfg.modules_to_save) if cfg.modules_to_save else None,
        "fan_in_fan_out": any(isinstance(m.base_layer, Conv1DAsLinear) for m in modules.values()),
        "bias": "none", "init_lora_weights": True, "inference_mode": True,
        # only keys every PEFT since 0.9 knows: newer PEFTs default the rest, older ones would reject them
        "use_dora": False, "rank_pattern": {}, "alpha_pattern": {},
    }
    os.makedirs(path, exist_ok=True)
    with atomic_write(os.path.join(path, WEIGHTS_NAME)) as tmp:
        save_file(tensors, tmp, metadata={"format": "pt"})
    with atomic_write(os.path.join(path, CONFIG_NAME)) as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(config, handle, indent=2, sort_keys=True)
            handle.write("\n")


# ---------------------------------------------------------------------------------------------- loading
def read_adapter_config(path):
    """The checked LoRA config dict from ``<path>/adapter_config.json``."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be an adapter folder path (str or os.PathLike), got {type(path).__name__}")
    file = os.path.join(os.fspath(path), CONFIG_NAME)
    if os.path.isfile(path):
        raise NotADirectoryError(f"{os.fspath(path)} is a file; pass the adapter folder that holds {CONFIG_NAME}")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"adapter folder not found: {path}")
    if not os.path.isfile(file):
        raise FileNotFoundError(f"no {CONFIG_NAME} in {path}")
    try:
        with open(file, encoding="utf-8") as handle:
            config = json.load(handle)
    except json.JSONDecodeError as err:
        raise ValueError(f"{file}: not valid JSON (line {err.lineno}: {err.msg})") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{file}: not UTF-8 text ({err})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{file}: expected a JSON object, got {type(config).__name__}")
    if config.get("peft_type") != "LORA":
        raise ValueError(f"{file}: peft_type is {config.get('peft_type')!r}; only LoRA adapters (LORA) load here")
    for key, default in _UNSUPPORTED.items():
        if config.get(key, default) not in (default, None, {}, False):
            raise ValueError(f"{file}: {key}={config[key]!r} is not supported by Act-LoRA's FastActLoRALinear")
    if config.get("bias", "none") != "none":
        raise ValueError(f"{file}: bias={config['bias']!r} is not supported (only 'none')")
    r, alpha, dropout = config.get("r"), config.get("lora_alpha"), config.get("lora_dropout", 0.0)
    try:
        check_lora_hyperparameters(r, alpha, dropout)
    except (TypeError, ValueError) as err:  # named as the file names them
        message = str(err).replace("alpha", "lora_alpha").replace("dropout", "lora_dropout")
        raise ValueError(f"{file}: {message}") from None
    targets = config.get("target_modules")
    if not (isinstance(targets, str) or (isinstance(targets, list) and targets
                                         and all(isinstance(t, str) for t in targets))):
        raise ValueError(f"{file}: target_modules must be a regex string or a list of names, got {targets!r}")
    for key in ("target_modules", "exclude_modules"):
        if isinstance(config.get(key), str):
            try:
                re.compile(config[key])
            except re.error as err:
                raise ValueError(f"{file}: {key}={config[key]!r} is not a valid regex: {err}") from None
    layers = config.get("layers_to_transform")
    if layers is not None and not (_is_int(layers) or (isinstance(layers, list) and all(map(_is_int, layers)))):
        raise ValueError(f"{file}: layers_to_transform must be an int, a list of ints or null, got {layers!r}")
    for key in ("layers_pattern", "exclude_modules"):
        value = config.get(key)
        if value is not None and not (isinstance(value, str) or (isinstance(value, list)
                                                                 and all(isinstance(v, str) for v in value))):
            raise ValueError(f"{file}: {key} must be a string, a list of strings or null, got {value!r}")
    saved = config.get("modules_to_save")
    if saved is not None and not (isinstance(saved, list) and all(isinstance(v, str) and v for v in saved)):
        raise ValueError(f"{file}: modules_to_save must be a list of module names or null, got {saved!r}")
    if not isinstance(config.get("use_rslora", False), bool):
        raise ValueError(f"{file}: use_rslora must be true or false, got {config['use_rslora']!r}")
    return config


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _read_weights(path):
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    file = os.path.join(os.fspath(path), WEIGHTS_NAME)
    if not os.path.isfile(file):
        pickled = os.path.join(os.fspath(path), "adapter_model.bin")
        extra = " (an adapter_model.bin is there, but pickled files are not loaded)" if os.path.isfile(pickled) else ""
        raise FileNotFoundError(f"no {WEIGHTS_NAME} in {path}{extra}")
    try:
        return load_file(file)
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise ValueError(f"{file}: not a readable safetensors file ({err})") from None


def _expected_shapes(model, config, targets):
    r = config["r"]
    shapes = {}
    for name in targets:
        out_features, in_features = linear_shape(model.get_submodule(name))
        shapes[f"{PREFIX}{name}.lora_A.weight"] = (r, in_features)
        shapes[f"{PREFIX}{name}.lora_B.weight"] = (out_features, r)
    saved = match_modules_to_save(model, config.get("modules_to_save") or [])
    for name, module in saved.items():
        for param_name, tensor in module.state_dict().items():
            shapes[f"{PREFIX}{name}.{param_name}"] = tuple(tensor.shape)
    return shapes, saved


def _layers_of(model, targets, blocks):
    try:
        stack = find_blocks(model, blocks)
    except ValueError:
        return None, [], ""
    layers = sorted({int(name[len(stack.path) + 1:].split(".", 1)[0]) for name in targets
                     if name.startswith(stack.path + ".")})
    return stack, layers, stack.layers_pattern


def load_adapter(model, path, *, backend="auto", blocks=None):
    """Inject FastActLoRALinear where the adapter config at `path` says and load its weights.

    Everything is checked before the model is touched: a non-LoRA or unsupported config, a missing or extra
    key, a shape mismatch and a corrupt file raise ValueError (FileNotFoundError for missing files) naming it.
    On a model that already carries the same Act-LoRA layers, only the weights are loaded.
    """
    model = unwrap_model(model)
    config = read_adapter_config(path)
    weights = _read_weights(path)
    existing = lora_modules(model)
    targets = sorted(existing) if existing else _peft_targets(model, config)
    if not targets:
        raise ValueError(f"{os.path.join(path, CONFIG_NAME)}: target_modules={config['target_modules']!r} "
                         f"(layers {config.get('layers_to_transform')}) matches no linear layer of "
                         f"{type(model).__name__}")
    if existing:
        wanted = set(_peft_targets(model, config))
        if wanted and wanted != set(existing):
            raise RuntimeError("model already has Act-LoRA layers on other modules than the adapter's; call "
                               "remove_act_lora(model) first")
        if any(m.r != config["r"] for m in existing.values()):
            raise RuntimeError("model already has Act-LoRA layers of another rank than the adapter's "
                               f"r={config['r']}; call remove_act_lora(model) first")
    shapes, saved = _expected_shapes(model, config, targets)
    file = os.path.join(os.fspath(path), WEIGHTS_NAME)
    missing = sorted(set(shapes) - set(weights))
    extra = sorted(set(weights) - set(shapes))
    if missing:
        raise ValueError(f"{file}: missing key(s) {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if extra:
        raise ValueError(f"{file}: unexpected key(s) {extra[:5]}{' ...' if len(extra) > 5 else ''} that the "
                         "config's target_modules/layers_to_transform/modules_to_save do not account for")
    for key, shape in shapes.items():
        if tuple(weights[key].shape) != shape:
            raise ValueError(f"{file}: {key} has shape {tuple(weights[key].shape)}, the model needs {shape}")
        if not weights[key].is_floating_point() or not torch.isfinite(weights[key]).all():
            raise ValueError(f"{file}: {key} is not a finite floating-point tensor")

    stack, layers, layers_pattern = _layers_of(model, targets, blocks)
    if existing:
        modules = existing
    else:
        modules = inject_modules(model, targets, r=config["r"], alpha=config["lora_alpha"],
                                 dropout=config.get("lora_dropout", 0.0),
                                 use_rslora=bool(config.get("use_rslora", False)), backend=backend)
        model.act_lora_config = ActLoRAConfig(
            r=config["r"], alpha=config["lora_alpha"], dropout=float(config.get("lora_dropout", 0.0)),
            target_modules=config["target_modules"] if isinstance(config["target_modules"], list)
            else sorted({t.rsplit(".", 1)[-1] for t in targets}),
            layers=layers, block_path=stack.path if stack else "", layers_pattern=layers_pattern,
            modules_to_save=list(config.get("modules_to_save") or []),
            use_rslora=bool(config.get("use_rslora", False)))
    with torch.no_grad():
        for name, module in modules.items():
            module.lora_A.weight.copy_(weights[f"{PREFIX}{name}.lora_A.weight"])
            module.lora_B.weight.copy_(weights[f"{PREFIX}{name}.lora_B.weight"])
        for name, module in saved.items():
            module.load_state_dict({k: weights[f"{PREFIX}{name}.{k}"] for k in module.state_dict()})
            for param in module.parameters():
                param.requires_grad_(True)
    return model


__all__ = ["save_adapter", "load_adapter", "read_adapter_config"]
