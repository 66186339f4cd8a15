"""act-lora-fast: selective LoRA (Act-LoRA) on fused LoRA kernels.

``from act_lora_fast import FastActLoRALinear`` loads only the layer and its kernels: every other public name
is resolved on first use (PEP 562), so a custom training loop never imports the training stack, scipy,
matplotlib, datasets or tqdm.
"""
import importlib

from .functional import lora_linear
from .layer import FastActLoRALinear

__version__ = "0.1.0"

# public name -> (module, attribute)
_LAZY = {
    "apply_act_lora": ("model.inject", "apply_act_lora"),
    "remove_act_lora": ("model.inject", "remove_act_lora"),
    "save_adapter": ("model.adapters", "save_adapter"),
    "load_adapter": ("model.adapters", "load_adapter"),
    "LayerScores": ("method.scores", "LayerScores"),
    "profile_activations": ("method.profiling", "profile_activations"),
    "profile_gradients": ("method.profiling", "profile_gradients"),
    "select_layers": ("method.selection", "select_layers"),
    "ranking_stability": ("method.stability", "ranking_stability"),
    "CostModel": ("measure.cost", "CostModel"),
    "calibrate_cost_model": ("measure.cost", "calibrate_cost_model"),
    "estimate_cost": ("measure.cost", "estimate_cost"),
    "select_within_budget": ("measure.cost", "select_within_budget"),
    "ScalingConfig": ("measure.scaling", "ScalingConfig"),
    "run_scaling": ("measure.scaling", "run_scaling"),
    "compare_with_peft": ("measure.vs_peft", "compare_with_peft"),
    "TrainConfig": ("train.config", "TrainConfig"),
    "TrainResult": ("train.config", "TrainResult"),
    # `finetune`, not `train`: that name would shadow the act_lora_fast.train subpackage.
    "finetune": ("train.loop", "train"),
    "evaluate": ("train.evaluate", "evaluate"),
    "run_compare": ("train.compare", "run_compare"),
    "load_glue": ("data.glue", "load_glue"),
    "load_text": ("data.text", "load_text"),
    "evaluate_text": ("train.evaluate", "evaluate_text"),
    "shard_model": ("train.distributed", "shard_model"),
    # PEFT integration (needs peft installed)
    "FusedLoraLinear": ("model.peft_layer", "FusedLoraLinear"),
    "patch_peft": ("model.peft_layer", "patch_peft"),
    "unpatch_peft": ("model.peft_layer", "unpatch_peft"),
    "peft_patched": ("model.peft_layer", "peft_patched"),
    "is_peft_patched": ("model.peft_layer", "is_peft_patched"),
    "fused_lora_config": ("model.peft_layer", "fused_lora_config"),
    "act_lora_config": ("method.peft_config", "act_lora_config"),
    "get_act_lora_model": ("method.peft_config", "get_act_lora_model"),
}

__all__ = ["FastActLoRALinear", "lora_linear", *_LAZY]


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'act_lora_fast' has no attribute {name!r}")
    module, attribute = _LAZY[name]
    value = getattr(importlib.import_module(f".{module}", __name__), attribute)
    globals()[name] = value  # resolved once
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
