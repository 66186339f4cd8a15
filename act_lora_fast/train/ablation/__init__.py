"""`ablate`: train every subset of a small model's blocks to test whether a block's score predicts what its
LoRA is worth (see `run.run_ablation`)."""
from .run import ablation_subsets, run_ablation

__all__ = ["ablation_subsets", "run_ablation"]
