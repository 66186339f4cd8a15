"""torch.autograd glue for the Triton LoRA kernels."""
import torch

from ._triton_utils import check_triton_device, triton_available  # noqa: F401  (re-exported)
from .triton_backward import lora_backward
from .triton_forward import lora_forward

__all__ = [
    "TritonLoRAFunction",
    "TritonProbeFunction",
    "triton_lora_linear",
    "triton_probe_linear",
    "triton_available",
    "check_triton_device",
]


def _rowsq_out(rowsq, x2d):
    # autograd.Function outputs must be tensors: "not computed" is an empty fp32 tensor.
    return rowsq if rowsq is not None else x2d.new_empty((0,), dtype=torch.float32)


class TritonLoRAFunction(torch.autograd.Function):
    """(y, rowsq) = LoRA linear; grads flow to x2d, lora_A, lora_B only (W, bias frozen)."""

    @staticmethod
    def forward(ctx, x2d, weight, bias, lora_A, lora_B, scaling, dropout_p, seed, compute_rowsq):
        y, xa, rowsq = lora_forward(x2d, weight, bias, lora_A, lora_B, scaling, dropout_p, seed, compute_rowsq)
        rowsq = _rowsq_out(rowsq, x2d)
        ctx.mark_non_differentiable(rowsq)
        # x is only re-read for dA; xa is kept (fp32, T x r) rather than recomputed for dB.
        ctx.save_for_backward(x2d if ctx.needs_input_grad[3] else None, weight, lora_A, lora_B, xa)
        ctx.scaling, ctx.dropout_p, ctx.seed = float(scaling), float(dropout_p), int(seed)
        return y, rowsq

    @staticmethod
    def backward(ctx, dy, _drowsq):
        x2d, weight, lora_A, lora_B, xa = ctx.saved_tensors
        needs_dx, needs_dA, needs_dB = ctx.needs_input_grad[0], ctx.needs_input_grad[3], ctx.needs_input_grad[4]
        dx = dA = dB = None
        if dy is not None and (needs_dx or needs_dA or needs_dB):
            dx, dA, dB = lora_backward(dy, x2d, weight, lora_A, lora_B, xa, ctx.scaling, ctx.dropout_p, ctx.seed,
                                       needs_dx, needs_dA, needs_dB)
        return dx, None, None, dA, dB, None, None, None, None


class TritonProbeFunction(torch.autograd.Function):
    """(y, rowsq) of a plain linear (no adapter); rowsq fused into the GEMM. Only x gets a grad."""

    @staticmethod
    def forward(ctx, x2d, weight, bias):
        y, _, rowsq = lora_forward(x2d, weight, bias, None, None, 0.0, 0.0, 0, True)
        ctx.mark_non_differentiable(rowsq)
        ctx.save_for_backward(weight)
        return y, rowsq

    @staticmethod
    def backward(ctx, dy, _drowsq):
        (weight,) = ctx.saved_tensors
        dx = None
        if dy is not None and ctx.needs_input_grad[0]:
            dx, _, _ = lora_backward(dy, None, weight, None, None, None, 0.0, 0.0, 0, True, False, False)
        return dx, None, None


def triton_lora_linear(x2d, weight, bias, lora_A, lora_B, scaling, dropout_p=0.0, seed=0, compute_rowsq=True):
    """Returns (y, rowsq); rowsq is an empty tensor when compute_rowsq is False."""
    check_triton_device(x2d, weight, bias, lora_A, lora_B)
    return TritonLoRAFunction.apply(x2d, weight, bias, lora_A, lora_B, scaling, dropout_p, seed, compute_rowsq)


def triton_probe_linear(x2d, weight, bias=None):
    """Returns (y, rowsq) for y = x @ W^T + b with rowsq = sum_k x^2 computed in the same GEMM."""
    check_triton_device(x2d, weight, bias)
    return TritonProbeFunction.apply(x2d, weight, bias)
