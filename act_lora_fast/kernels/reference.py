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


def update_sums_reference(x, dy, token_mask=None):
    """[Σ_t w_t·‖x_t‖·‖dy_t‖, Σ_t w_t] in float64 (w_t = 1, or the bool `token_mask` over x's token dims)."""
    product = x.double().norm(dim=-1) * dy.double().norm(dim=-1)
    weight = torch.ones_like(product) if token_mask is None else token_mask.to(product)
    return torch.stack([(product * weight).sum(), weight.sum()])


class UpdateTap(torch.autograd.Function):
    """Identity on y whose backward hands `update_sink` the update sums of the dy it passes on (the
    reference backend's way to the score; the fused backends reduce it inside their own backward)."""

    @staticmethod
    def forward(ctx, y, x, update_sink, token_mask):
        ctx.save_for_backward(x.detach(), token_mask)
        return y.view_as(y)

    @staticmethod
    def backward(ctx, dy):
        x, token_mask = ctx.saved_tensors
        return dy, None, update_sums_reference(x, dy, token_mask), None
