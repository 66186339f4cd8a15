"""Adapters in PEFT's on-disk format: ``adapter_config.json`` + ``adapter_model.safetensors``.

What peft 0.21's ``save_pretrained`` writes, and so what we write and read:
- LoRA weights under ``base_model.model.<module path>.lora_A.weight`` / ``.lora_B.weight`` (no adapter name);
- each ``modules_to_save`` module's parameters under ``base_model.model.<module path>.<param>``;
- the config's ``target_modules`` + ``layers_to_transform`` + ``layers_pattern`` select the modules.

``peft.PeftModel.from_pretrained(base, path)`` on our adapter reproduces our model, and `load_adapter` on
an adapter PEFT saved reproduces PEFT's. Files are written atomically and never unpickled.
"""
import errno
import json
import os
import re

import torch

from .._checks import check_lora_hyperparameters
from .._dist import is_dtensor
from .._io import recover_folder, write_folder
from ..layer import FastActLoRALinear
from .anatomy import Conv1DAsLinear, find_blocks, is_linear_like, linear_shape, replace_module, unwrap_model
from .inject import ActLoRAConfig, check_materialised, inject_modules, lora_modules, match_modules_to_save
from .targets import peft_matches

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PREFIX = "base_model.model."
# The LoraConfig keys we implement (or that change nothing once the adapter is trained). Any other key with a
# non-default value (use_dora, rank_pattern, use_bdlora, kasa_config, ... and keys of PEFTs to come) changes the
# math of the adapter: it is refused by name rather than ignored.
_IMPLEMENTED = {"peft_type", "task_type", "auto_mapping", "peft_version", "base_model_name_or_path", "revision",
                "inference_mode", "r", "lora_alpha", "lora_dropout", "use_rslora", "target_modules",
                "exclude_modules", "layers_to_transform", "layers_pattern", "modules_to_save", "fan_in_fan_out",
                "bias", "init_lora_weights", "runtime_config", "megatron_core", "qalora_group_size"}
_DEFAULT_VALUES = (None, False, {}, [], "")
# init_lora_weights values that only draw the initial A and B; the others (pissa, olora, corda, loftq, ...)
# also rewrite the base weights, so the adapter is meaningless on the unmodified model
_PLAIN_INITS = (True, False, "gaussian", "eva", "orthogonal")
# the config fields that the weights file records (safetensors metadata, which PEFT ignores): a config from
# another save than the weights is refused instead of loaded with the wrong scaling or layers
_FINGERPRINT_KEY = "act_lora_adapter_config"
_FINGERPRINT_FIELDS = ("r", "lora_alpha", "lora_dropout", "use_rslora", "target_modules", "layers_to_transform",
                       "layers_pattern", "modules_to_save")


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


def _adapter(model):
    """(model, its ActLoRAConfig, its LoRA layers), or a ValueError when it has no adapter."""
    model = unwrap_model(model)
    cfg = getattr(model, "act_lora_config", None)
    if not isinstance(cfg, ActLoRAConfig):
        raise ValueError("model has no Act-LoRA adapter to save; call apply_act_lora (or load_adapter) first")
    modules = lora_modules(model)
    if not modules:
        raise ValueError("model has act_lora_config but no FastActLoRALinear layers (was it removed?)")
    return model, cfg, modules


def adapter_tensors(model):
    """``{PEFT key: tensor}`` of what `save_adapter` writes: each LoRA layer's A and B and every parameter and
    buffer of the ``modules_to_save``, as the model holds them (DTensor shards on an FSDP-sharded model)."""
    model, cfg, modules = _adapter(model)
    tensors = {}
    for name, module in modules.items():
        if module.merged:
            raise ValueError(f"{name} is merged; unmerge() before saving so the adapter holds only the update")
        tensors[f"{PREFIX}{name}.lora_A.weight"] = module.lora_A.weight
        tensors[f"{PREFIX}{name}.lora_B.weight"] = module.lora_B.weight
    for name, module in match_modules_to_save(model, cfg.modules_to_save).items():
        for param_name, tensor in module.state_dict().items():
            tensors[f"{PREFIX}{name}.{param_name}"] = tensor
    return tensors


def save_adapter(model, path, *, base_model_name_or_path=None, tensors=None):
    """Write the Act-LoRA adapter of `model` to folder `path` in PEFT's format.

    `tensors`: the weights to write instead of the model's own, keyed as `adapter_tensors` keys them (an
    FSDP-sharded model's, gathered whole; see `act_lora_fast.train.distributed.save_sharded_adapter`).
    """
    from safetensors.torch import save_file

    model, cfg, modules = _adapter(model)
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
    expected = adapter_tensors(model)
    if tensors is None:
        tensors = expected
    elif not isinstance(tensors, dict) or set(tensors) != set(expected):
        raise ValueError("tensors must hold exactly the keys adapter_tensors(model) gives")
    sharded = [key for key, tensor in tensors.items() if is_dtensor(tensor)]
    if sharded:
        raise ValueError(f"{sharded[0]} is a shard (DTensor) of an FSDP-sharded model; gather the adapter first "
                         "(act_lora_fast.train.distributed.save_sharded_adapter does, on every rank)")
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
    fingerprint = json.dumps({key: config[key] for key in _FINGERPRINT_FIELDS}, sort_keys=True)

    def write(folder):
        try:
            save_file(tensors, os.path.join(folder, WEIGHTS_NAME),
                      metadata={"format": "pt", _FINGERPRINT_KEY: fingerprint})
        except Exception as err:  # noqa: BLE001 - safetensors' I/O errors are no OSError: made one
            if type(err).__name__ != "SafetensorError":
                raise
            found = re.search(r"os error (\d+)", str(err))
            code = int(found[1]) if found else errno.EIO
            raise OSError(code, os.strerror(code) if found else str(err)) from None
        with open(os.path.join(folder, CONFIG_NAME), "w", encoding="utf-8") as handle:
            json.dump(config, handle, indent=2, sort_keys=True)
            handle.write("\n")

    # The adapter's two files replace the old pair as one unit (weights first where the folder holds other
    # files: a crash between them leaves a pair the fingerprint makes `load_adapter` refuse).
    write_folder(path, write, names=(WEIGHTS_NAME, CONFIG_NAME), what="adapter folder")


# ---------------------------------------------------------------------------------------------- loading
def read_adapter_config(path):
    """The checked LoRA config dict from ``<path>/adapter_config.json``."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be an adapter folder path (str or os.PathLike), got {type(path).__name__}")
    file = os.path.join(os.fspath(path), CONFIG_NAME)
    if os.path.isfile(path):
        raise NotADirectoryError(f"{os.fspath(path)} is a file; pass the adapter folder that holds {CONFIG_NAME}")
    recover_folder(path)  # an adapter a killed save left beside its path is put back
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
    for key, value in config.items():
        if key not in _IMPLEMENTED and not any(value is d or value == d for d in _DEFAULT_VALUES):
            raise ValueError(f"{file}: {key}={value!r} is a PEFT LoRA option Act-LoRA does not implement; "
                             f"loading would silently drop it (only its default, off, is supported)")
    init = config.get("init_lora_weights", True)
    if not any(init is p or (isinstance(init, str) and init == p) for p in _PLAIN_INITS):
        raise ValueError(f"{file}: init_lora_weights={init!r} is not plain LoRA (it rewrites the base weights or "
                         "changes the layer: PiSSA, OLoRA, LoftQ, CorDA, MiCA); Act-LoRA loads plain LoRA adapters "
                         "on the unmodified base model only")
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
    """``(tensors, metadata)`` of ``<path>/adapter_model.safetensors``."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    file = os.path.join(os.fspath(path), WEIGHTS_NAME)
    if not os.path.isfile(file):
        pickled = os.path.join(os.fspath(path), "adapter_model.bin")
        extra = " (an adapter_model.bin is there, but pickled files are not loaded)" if os.path.isfile(pickled) else ""
        raise FileNotFoundError(f"no {WEIGHTS_NAME} in {path}{extra}")
    try:
        with safe_open(file, framework="pt") as handle:
            metadata = handle.metadata() or {}
        return load_file(file), metadata
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise ValueError(f"{file}: not a readable safetensors file ({err})") from None


def _check_fingerprint(path, config, metadata):
    """Refuse weights saved with another config than this one (a save cut short, a hand-edited file)."""
    recorded = metadata.get(_FINGERPRINT_KEY)
    if recorded is None:
        return  # PEFT's own files carry none
    weights_file = os.path.join(os.fspath(path), WEIGHTS_NAME)
    try:
        recorded = json.loads(recorded)
    except json.JSONDecodeError:
        raise ValueError(f"{weights_file}: its {_FINGERPRINT_KEY} metadata is not valid JSON") from None
    current = json.loads(json.dumps({key: config.get(key) for key in _FINGERPRINT_FIELDS}))
    for key in _FINGERPRINT_FIELDS:
        if key in recorded and recorded[key] != current[key]:
            raise ValueError(f"{weights_file} was saved with {key}={recorded[key]!r}, but "
                             f"{os.path.join(os.fspath(path), CONFIG_NAME)} says {key}={current[key]!r}: the two "
                             "files come from different saves (an interrupted save?) or one was edited; save the "
                             "adapter again")


def _expected_shapes(model, config, targets, saved):
    r = config["r"]
    shapes = {}
    for name in targets:
        out_features, in_features = linear_shape(model.get_submodule(name))
        shapes[f"{PREFIX}{name}.lora_A.weight"] = (r, in_features)
        shapes[f"{PREFIX}{name}.lora_B.weight"] = (out_features, r)
    for name, module in saved.items():
        for param_name, tensor in module.state_dict().items():
            shapes[f"{PREFIX}{name}.{param_name}"] = tuple(tensor.shape)
    return shapes


def _saved_modules(model, names):
    """PEFT's rule for ``modules_to_save``: an entry matching no module is skipped, not an error.

    A PEFT adapter saved with ``task_type="SEQ_CLS"`` lists ``["classifier", "score"]`` whatever the model,
    and PEFT loads it into BERT (no ``score``) and GPT-2 (no ``classifier``) alike. Returns the entries that
    matched and ``{module name: module}``.
    """
    found, kept = {}, []
    for wanted in names or []:
        try:
            hits = match_modules_to_save(model, [wanted])
        except ValueError:
            continue
        kept.append(wanted)
        found.update({n: m for n, m in hits.items() if not any(n.startswith(f + ".") for f in found)})
    return kept, found


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
    key, a shape mismatch, weights saved with another config and a corrupt file raise ValueError
    (FileNotFoundError for missing files) naming it. New layers take the model's train/eval mode.

    On a model that already carries Act-LoRA layers on the same modules with the same rank, the adapter
    replaces them whole: merged layers are unmerged first, then each layer is rebuilt with the adapter's
    alpha, dropout and rslora (not only its weights), and ``model.act_lora_config`` becomes the adapter's.
    Layers on other modules or of another rank are refused (call `remove_act_lora` first).
    """
    model = unwrap_model(model)
    check_materialised(model, "load_adapter")
    config = read_adapter_config(path)
    weights, metadata = _read_weights(path)
    _check_fingerprint(path, config, metadata)
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
    kept_saved, saved = _saved_modules(model, config.get("modules_to_save"))
    shapes = _expected_shapes(model, config, targets, saved)
    file = os.path.join(os.fspath(path), WEIGHTS_NAME)
    missing = sorted(set(shapes) - set(weights))
    # keys of modules_to_save entries that match no module here are skipped, as PEFT skips them
    skipped = [m for m in (config.get("modules_to_save") or []) if m not in kept_saved]
    extra = sorted(k for k in set(weights) - set(shapes)
                   if not any(re.search(rf"(^|\.){re.escape(m)}\.", k[len(PREFIX):]) for m in skipped))
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

    r, alpha = config["r"], config["lora_alpha"]
    dropout, use_rslora = float(config.get("lora_dropout", 0.0)), bool(config.get("use_rslora", False))
    stack, layers, layers_pattern = _layers_of(model, targets, blocks)
    if existing:
        modules = _rebuild(model, existing, r=r, alpha=alpha, dropout=dropout, use_rslora=use_rslora,
                           backend=backend)
    else:
        modules = inject_modules(model, targets, r=r, alpha=alpha, dropout=dropout, use_rslora=use_rslora,
                                 backend=backend)
    model.act_lora_config = ActLoRAConfig(
        r=r, alpha=alpha, dropout=dropout,
        target_modules=config["target_modules"] if isinstance(config["target_modules"], list)
        else sorted({t.rsplit(".", 1)[-1] for t in targets}),
        layers=layers, block_path=stack.path if stack else "", layers_pattern=layers_pattern,
        modules_to_save=kept_saved, use_rslora=use_rslora)
    with torch.no_grad():
        for name, module in modules.items():
            module.lora_A.weight.copy_(weights[f"{PREFIX}{name}.lora_A.weight"])
            module.lora_B.weight.copy_(weights[f"{PREFIX}{name}.lora_B.weight"])
        for name, module in saved.items():
            module.load_state_dict({k: weights[f"{PREFIX}{name}.{k}"] for k in module.state_dict()})
            for param in module.parameters():
                param.requires_grad_(True)
    return model


def _rebuild(model, existing, *, r, alpha, dropout, use_rslora, backend):
    """New FastActLoRALinear layers (the adapter's whole configuration) around the existing layers' bases."""
    fresh = {}
    for name, layer in existing.items():  # build all first: nothing changes if one of them fails
        fresh[name] = FastActLoRALinear(layer.base_layer, r=r, alpha=alpha, dropout=dropout, use_rslora=use_rslora,
                                        track_norms=layer.track_norms, backend=backend)
        fresh[name].train(layer.training)
    for name, layer in existing.items():
        if layer.merged:
            layer.unmerge()  # the base weight must not keep the old update
        replace_module(model, name, fresh[name])
    return fresh


__all__ = ["adapter_tensors", "save_adapter", "load_adapter", "read_adapter_config"]
