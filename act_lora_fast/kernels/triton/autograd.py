"""torch.autograd glue for the Triton LoRA kernels.

Both Functions take inputs already checked (`act_lora_fast.functional.lora_linear` checks them; the helpers at
the end run `check_forward_inputs` first). They return (y, rowsq) and take the update-score sink of `TorchFusedLoRA` (see torch_fused.py):
`update_sink` (float64 (2,), requiring grad) receives [Σ_t w_t·‖x_t‖·‖dy_t‖, Σ_t w_t] as its gradient, from the
forward's Σx² and the Σdy² that the backward's pass over whole rows of dy reduces on the way.
A frozen base weight or bias that a caller has made trainable gets dW = dyᵀ·x and db = Σ_t dy from cuBLAS.
"""
import torch

from ..torch_fused import base_grads, function_outputs, update_sums
from .backward import lora_backward
from .forward import check_forward_inputs, lora_forward


def _rowsq_out(rowsq, x2d):
    # autograd.Function outputs must be tensors: "not computed" is an empty fp32 tensor.
    return rowsq if rowsq is not None else x2d.new_empty((0,), dtype=torch.float32)


class TritonLoRAFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x2d, weight, bias, lora_A, lora_B, scaling, dropout_p, seed, compute_rowsq,
                update_sink=None, token_mask=None):
        needs = ctx.needs_input_grad
        wants_update = update_sink is not None and needs[9]
        y, xa, rowsq = lora_forward(x2d, weight=weight, bias=bias, lora_A=lora_A, lora_B=lora_B, scaling=scaling,
                                    dropout_p=dropout_p, seed=seed, compute_rowsq=compute_rowsq or wants_update,
                                    checked=True)
        # x is only re-read for dA (and dW); xa is kept (fp32, T x r) rather than recomputed for dB.
        needs_x = needs[3] or needs[1]
        if wants_update:
            ctx.save_for_backward(x2d if needs_x else None, weight, lora_A, lora_B, xa, rowsq, token_mask)
        else:
            ctx.save_for_backward(x2d if needs_x else None, weight, lora_A, lora_B, xa)
        ctx.scaling, ctx.dropout_p, ctx.seed = scaling, dropout_p, seed
        return function_outputs(ctx, y, rowsq, compute_rowsq)

    @staticmethod
    def backward(ctx, dy, _drowsq=None):
        if dy is None:  # y did not reach the loss (only rowsq did)
            return (None,) * 11
        saved = ctx.saved_tensors
        if len(saved) == 5:
            (x2d, weight, lora_A, lora_B, xa), x_rowsq, token_mask = saved, None, None
        else:
            x2d, weight, lora_A, lora_B, xa, x_rowsq, token_mask = saved
        needs = ctx.needs_input_grad
        grads = lora_backward(dy, weight=weight, x=x2d, lora_A=lora_A, lora_B=lora_B, xa=xa, scaling=ctx.scaling,
                              dropout_p=ctx.dropout_p, seed=ctx.seed, needs_dx=needs[0],
                              needs_dA=needs[3], needs_dB=needs[4],
                              compute_dy_rowsq=x_rowsq is not None, checked=True)
        update = update_sums(x_rowsq, grads.dy_rowsq, token_mask) if x_rowsq is not None else None
        d_weight, d_bias = base_grads(ctx, dy, x2d) if needs[1] or needs[2] else (None, None)
        return grads.dx, d_weight, d_bias, grads.dA, grads.dB, None, None, None, None, update, None


class TritonProbeFunction(torch.autograd.Function):
    """(y, rowsq) of a plain linear (no adapter); rowsq fused into the GEMM."""

    @staticmethod
    def forward(ctx, x2d, weight, bias, update_sink=None, token_mask=None):
        wants_update = update_sink is not None and ctx.needs_input_grad[3]
        y, _, rowsq = lora_forward(x2d, weight=weight, bias=bias, compute_rowsq=True, checked=True)
        ctx.mark_non_differentiable(rowsq)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x2d if ctx.needs_input_grad[1] else None, weight, rowsq if wants_update else None,
                              token_mask if wants_update else None)
        return y, rowsq

    @staticmethod
    def backward(ctx, dy, _drowsq):
        if dy is None:
            return None, None, None, None, None
        x2d, weight, x_rowsq, token_mask = ctx.saved_tensors
        grads = lora_backward(dy, weight=weight, needs_dx=ctx.needs_input_grad[0],
                              compute_dy_rowsq=x_rowsq is not None, checked=True)
        update = update_sums(x_rowsq, grads.dy_rowsq, token_mask) if x_rowsq is not None else None
        d_weight, d_bias = base_grads(ctx, dy, x2d)
        return grads.dx, d_weight, d_bias, update, None


triton_lora_function = TritonLoRAFunction.apply  # update_sink and token_mask may be left out
triton_probe_function = TritonProbeFunction.apply


def triton_lora_linear(x2d, weight, bias, lora_A, lora_B, scaling, *, dropout_p=0.0, seed=0, compute_rowsq=True,
                       update_sink=None, token_mask=None):
    """Returns (y, rowsq); rowsq is an empty tensor when compute_rowsq is False.
    `TritonLoRAFunction.apply` itself returns y alone when compute_rowsq is False."""
    check_forward_inputs(x2d, weight, bias, lora_A, lora_B, dropout_p)
    out = TritonLoRAFunction.apply(x2d, weight, bias, lora_A, lora_B, scaling, dropout_p, seed, compute_rowsq,
                                   update_sink, token_mask)
    return out if compute_rowsq else (out, _rowsq_out(None, x2d))


def triton_probe_linear(x2d, weight, bias=None, *, update_sink=None, token_mask=None):
    """Returns (y, rowsq) for y = x @ W^T + b with rowsq = sum_k x^2 computed in the same GEMM."""
    check_forward_inputs(x2d, weight, bias)
    return TritonProbeFunction.apply(x2d, weight, bias, update_sink, token_mask)
