"""Float64 comparisons shared by the numeric tests: one error measure and the tolerances it is held to.

Every bound is on max|out - ref| / max|ref| against a float64 reference computed from the same (rounded)
inputs, so it measures the arithmetic of the path under test, not the rounding of its inputs.
"""
import pytest
import torch

# The Triton kernels: fp32 through IEEE dots; 16-bit operands on tensor cores with fp32 accumulation.
KERNEL_RTOL = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 3e-2}
# The fused torch path (BLAS): fp16 keeps ~11 bits, sums over K=512 lose a few more.
TORCH_RTOL = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}
# fp32 sums of squares of the exact input values (rowsq), and the float64 update score built on them.
NORM_RTOL = 1e-5

# (dtype, rtol) tuples as pytest params, for parametrising a test over the dtypes.
KERNEL_DTYPES = [pytest.param(dtype, rtol, id=str(dtype).replace("torch.", "")) for dtype, rtol in KERNEL_RTOL.items()]


def to64(t):
    """The float64 CPU copy of a tensor (None stays None)."""
    return None if t is None else t.detach().double().cpu()


def rel_err(actual, expected) -> float:
    """max|actual - expected| / max|expected|, in float64 on the CPU."""
    actual, expected = to64(actual), to64(expected)
    return ((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-30)).item()


def assert_rel_close(actual, expected, rtol, name="value"):
    assert actual is not None and tuple(actual.shape) == tuple(expected.shape), f"{name}: shape"
    err = rel_err(actual, expected)
    assert err < rtol, f"{name}: relative error {err:.2e} >= {rtol:.0e}"


def float64_lora_grads(fn, inputs, dy, wants):
    """Run `fn(**inputs)` with the inputs named in `wants` as fresh leaves requiring grad; backprop `dy`.

    Returns (y, {name: grad}); `fn` is called with float64 copies when `inputs` are float64."""
    leaves = {name: (t.detach().clone().requires_grad_(name in wants) if t is not None else None)
              for name, t in inputs.items()}
    y = fn(**leaves)
    y.backward(dy)
    return y.detach(), {name: leaves[name].grad for name in wants}
