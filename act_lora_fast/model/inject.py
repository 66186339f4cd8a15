"""Selective injection: LoRA (FastActLoRALinear) on the targeted linears of the chosen blocks only."""
import dataclasses
import logging

from .._checks import check_bool, check_layers, check_lora_hyperparameters
from ..functional import check_backend_name
from ..layer import FastActLoRALinear
from .anatomy import (Conv1DAsLinear, as_linear, default_target_modules, find_blocks, linear_shape,
                      replace_module, target_linears, unwrap_model)
from .targets import check_target_modules, matches_target

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class ActLoRAConfig:
    """What `apply_act_lora` did, kept on the model as ``model.act_lora_config`` (and saved PEFT's way)."""
    r: int = 8
    alpha: float = 16
    dropout: float = 0.0
    target_modules: list = dataclasses.field(default_factory=list)  # resolved names, PEFT-style suffixes
    layers: list = dataclasses.field(default_factory=list)
    block_path: str = ""
    layers_pattern: str = ""
    modules_to_save: list = dataclasses.field(default_factory=list)
    use_rslora: bool = False


def lora_modules(model):
    """``{module name: FastActLoRALinear}`` of the model's adapters (rank ≥ 1; probes are not adapters)."""
    return {name: module for name, module in unwrap_model(model).named_modules()
            if isinstance(module, FastActLoRALinear) and module.r > 0}


def check_materialised(model, what):
    """Refuse a model whose parameters are on the meta device (built without weights): LoRA layers made
    there hold no numbers, and loading into them silently stores nothing."""
    for name, param in model.named_parameters():
        if param.is_meta:
            raise ValueError(f"{what}: the model's parameter {name} is on the meta device (a model built without "
                             "weights, e.g. under device='meta' or init_empty_weights); load its weights first")


def match_modules_to_save(model, names):
    """``{name: module}`` for PEFT-style ``modules_to_save`` names (exact name or ``.``-suffix, outermost)."""
    if not names:
        return {}
    if isinstance(names, str) or not all(isinstance(n, str) and n for n in names):
        raise TypeError(f"modules_to_save must be a list of module names, got {names!r}")
    found = {}
    for wanted in names:
        hits = [name for name, _ in model.named_modules()
                if name and (name == wanted or name.endswith("." + wanted))
                and not any(name.startswith(f + ".") for f in found)]
        if not hits:
            children = [name for name, _ in model.named_children()]
            raise ValueError(f"modules_to_save entry {wanted!r} matches no module of {type(model).__name__} "
                             f"(its top-level modules: {children})")
        for name in hits:
            found[name] = model.get_submodule(name)
    return found


def inject_modules(model, names, *, r, alpha, dropout, use_rslora=False, backend="auto"):
    """Freeze every parameter, then wrap each named linear in a FastActLoRALinear; returns the new layers."""
    check_lora_hyperparameters(r, alpha, dropout)
    check_backend_name(backend)
    training = model.training
    for param in model.parameters():
        param.requires_grad_(False)
    created = {}
    for name in names:
        layer = FastActLoRALinear(as_linear(model.get_submodule(name)), r=r, alpha=alpha, dropout=dropout,
                                  use_rslora=use_rslora, backend=backend)
        layer.train(training)  # a model in eval() gets adapters in eval(): no LoRA dropout at inference
        replace_module(model, name, layer)
        created[name] = layer
    return created


def count_lora_parameters(model, layers=None, target_modules=None, r=8, blocks=None):
    """LoRA parameters r·(in + out) summed over the targeted linears of `layers` (None: all blocks)."""
    targets = target_linears(model, target_modules, blocks)
    layers = range(len(targets)) if layers is None else check_layers(layers, len(targets))
    return sum(r * sum(linear_shape(m)) for i in layers for m in targets[i].values())


def _resolved_targets(target_modules, chosen_names, model, blocks=None):
    """The PEFT-style suffix list that names the chosen modules (for the config and the saved adapter)."""
    if target_modules is None:
        target_modules = default_target_modules(model, blocks)
    if isinstance(target_modules, str):
        return sorted({name.rsplit(".", 1)[-1] for name in chosen_names})
    return [t for t in target_modules if any(matches_target(name, [t]) for name in chosen_names)]


def apply_act_lora(model, layers, *, target_modules=None, r=8, alpha=16, dropout=0.0, modules_to_save=None,
                   backend="auto", blocks=None, verbose=True):
    """Act-LoRA: freeze the model, put LoRA on the targeted linears of blocks `layers` only.

    ``modules_to_save`` (e.g. ``["classifier"]``) stay fully trainable. The model is changed in place and
    returned, with ``model.act_lora_config`` (an `ActLoRAConfig`) describing the adapter. With `verbose`
    one line goes to the ``act_lora_fast.model.inject`` logger at INFO: trainable parameters and the LoRA
    parameters' share of all-layer LoRA's (`parameter_report` returns the same line).
    """
    inner = unwrap_model(model)
    if lora_modules(inner) or isinstance(getattr(inner, "act_lora_config", None), ActLoRAConfig):
        raise RuntimeError("Act-LoRA is already applied to this model; call remove_act_lora(model) first")
    check_materialised(inner, "apply_act_lora")
    check_lora_hyperparameters(r, alpha, dropout)
    check_backend_name(backend)
    check_bool("verbose", verbose)
    target_modules = check_target_modules(target_modules)
    stack = find_blocks(inner, blocks)
    layers = check_layers(layers, len(stack))
    targets = target_linears(inner, target_modules, stack.path)
    chosen = [name for i in layers for name in targets[i]]
    if not chosen:
        raise ValueError(f"blocks {layers} hold no linear matching target_modules={target_modules!r}")
    if modules_to_save is not None and not isinstance(modules_to_save, (str, list, tuple)):
        raise TypeError(f"modules_to_save must be a module name or a list of them, got "
                        f"{type(modules_to_save).__name__}")
    modules_to_save = [modules_to_save] if isinstance(modules_to_save, str) else list(modules_to_save or [])
    saved = match_modules_to_save(inner, modules_to_save)
    for name in chosen:
        if any(name == s or name.startswith(s + ".") for s in saved):
            raise ValueError(f"{name} is both a LoRA target and inside modules_to_save")

    inject_modules(inner, chosen, r=r, alpha=alpha, dropout=dropout, backend=backend)
    for module in saved.values():
        for param in module.parameters():
            param.requires_grad_(True)
    inner.act_lora_config = ActLoRAConfig(
        r=r, alpha=alpha, dropout=float(dropout),
        target_modules=_resolved_targets(target_modules, chosen, inner, stack.path),
        layers=layers, block_path=stack.path, layers_pattern=stack.layers_pattern,
        modules_to_save=modules_to_save)
    if verbose:
        logger.info(parameter_report(inner, target_modules=target_modules, blocks=stack.path))
    return model


def apply_head_only(model, *, modules_to_save, r=8, alpha=16, dropout=0.0):
    """The head-only baseline: freeze the model but `modules_to_save` (no LoRA anywhere). The model gets an
    ``act_lora_config`` with no layers, so training reports it like any other run."""
    inner = unwrap_model(model)
    check_materialised(inner, "apply_head_only")
    saved = match_modules_to_save(inner, list(modules_to_save or []))
    if not saved:
        raise ValueError("the head-only baseline needs modules_to_save (the head to train); none matched")
    for param in inner.parameters():
        param.requires_grad_(False)
    for module in saved.values():
        for param in module.parameters():
            param.requires_grad_(True)
    stack = find_blocks(inner)
    inner.act_lora_config = ActLoRAConfig(r=r, alpha=alpha, dropout=float(dropout), layers=[],
                                          block_path=stack.path, layers_pattern=stack.layers_pattern,
                                          modules_to_save=list(modules_to_save))
    return model


def parameter_report(model, *, target_modules=None, blocks=None):
    """One line: LoRA parameters vs all-layer LoRA's, and trainable vs all parameters."""
    model = unwrap_model(model)
    cfg = model.act_lora_config
    lora = sum(p.numel() for m in lora_modules(model).values() for p in (m.lora_A.weight, m.lora_B.weight))
    all_layers = count_lora_parameters(model, None, target_modules, cfg.r, blocks)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return (f"Act-LoRA on blocks {cfg.layers} of {len(find_blocks(model, blocks))}: {lora:,} LoRA parameters = "
            f"{lora / all_layers:.1%} of all-layer LoRA's {all_layers:,}; trainable {trainable:,} of "
            f"{total:,} ({trainable / total:.2%})")


def remove_act_lora(model, *, merge=False):
    """Put the base linears back (GPT-2's as Conv1D). ``merge=True`` folds the adapters into them first."""
    inner = unwrap_model(model)
    for name, layer in lora_modules(inner).items():
        if merge and not layer.merged:
            layer.merge()
        elif not merge and layer.merged:
            layer.unmerge()
        base = layer.base_layer
        replace_module(inner, name, base.to_conv1d() if isinstance(base, Conv1DAsLinear) else base)
    if hasattr(inner, "act_lora_config"):
        del inner.act_lora_config
    return model

