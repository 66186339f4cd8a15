"""Textbook LoRA formulas, unfused: what every fast path is tested against.

These use plain autograd, so their gradients are the definition of correct.
"""
import torch


def lora_linear_reference(x, weight, bias, lora_A, lora_B, scaling, keep_mask=None):
    """y = x·Wᵀ + b + s·((x ⊙ m)·Aᵀ)·Bᵀ, with m the dropout keep mask (0 or 1/(1-p)) or None."""
    y = torch.nn.functional.linear(x, weight, bias)
    if lora_A is None:
        return y
    x_lora = x if keep_mask is None else x * keep_mask
    return y + scaling * (x_lora @ lora_A.t()) @ lora_B.t()


def row_sq_norms_reference(x):
    """Σ_k x[t, k]² for every token t (the last dim is the feature dim), in float64."""
    return x.double().pow(2).sum(-1)
