"""act-lora-fast: selective LoRA (Act-LoRA) on fused LoRA kernels."""
from .functional import lora_linear
from .layer import FastActLoRALinear
from .adapters import load_adapter, save_adapter
from .inject import apply_act_lora
from .profiling import LayerScores, profile_activations, profile_gradients
from .selection import select_layers
from .stability import ranking_stability
from .cost import CostModel, calibrate_cost_model, estimate_cost, select_within_budget
from .scaling import ScalingConfig, compare_with_peft, run_scaling
# `finetune`, not `train`: that name would shadow the act_lora_fast.train subpackage.
from .train.loop import TrainConfig, TrainResult, evaluate, train as finetune
from .train.compare import run_compare
from .train.glue import load_glue

__version__ = "0.1.0"

__all__ = ["FastActLoRALinear", "lora_linear"]
__all__ += ["profile_activations", "profile_gradients", "LayerScores", "select_layers", "apply_act_lora",
            "save_adapter", "load_adapter", "ranking_stability"]
__all__ += ["CostModel", "calibrate_cost_model", "estimate_cost", "select_within_budget", "ScalingConfig",
            "run_scaling", "compare_with_peft"]
__all__ += ["TrainConfig", "TrainResult", "finetune", "evaluate", "run_compare", "load_glue"]
