"""Triton forward kernels for a LoRA linear layer.

    xa    = (x * m) @ A^T                      (T, r), fp32   -- shrink kernel, same pass computes rowsq
    y     = x @ W^T + b + s * xa @ B^T         (T, N)         -- one GEMM, expand added to its accumulator
    rowsq = sum_k x[t, k]^2                    (T,),  fp32    -- of the un-dropped x

m is the dropout keep mask (0 or 1/(1-p)), regenerated from tl.rand(seed, row * K + col).
"""
import torch
import triton
import triton.language as tl

from ._triton_utils import (
    block_r,
    check_triton_device,
    f32_dot,
    grouped_pid,
    keep_mask,
    mma,
    num_sms,
    skinny_launch,
    to_dot,
    use_interpreter_path,
)

# H200 (sm_90) tiles. 16-bit inputs run on wgmma tensor cores; fp32 inputs use IEEE dots (FMA
# pipes, no TF32) where big tiles only spill and take minutes in ptxas, so they get their own set.
GEMM_CONFIGS_16 = [
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 8}, num_stages=3, num_warps=8),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_stages=4, num_warps=8),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_stages=3, num_warps=4),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 8}, num_stages=4, num_warps=4),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_stages=4, num_warps=4),
]
GEMM_CONFIGS_32 = [
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": 8}, num_stages=3, num_warps=4),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": 8}, num_stages=3, num_warps=8),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 32, "GROUP_M": 8}, num_stages=3, num_warps=8),
]
GEMM_CONFIGS = GEMM_CONFIGS_16 + GEMM_CONFIGS_32
GEMM_TUNE_KEY = ["M", "N", "K", "HAS_LORA", "HAS_BIAS", "ROWSQ", "HAS_DROPOUT", "F32_DOT", "BLOCK_R"]


def prune_gemm_configs(configs, named_args, **kwargs):
    flag = lambda name: kwargs.get(name, named_args.get(name))  # noqa: E731
    keep = GEMM_CONFIGS_32 if flag("F32_DOT") else GEMM_CONFIGS_16
    if flag("HAS_DROPOUT"):
        # Philox state for more than 64 epilogue elements per thread spills to local memory.
        keep = [c for c in keep if c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] <= 64 * 32 * c.num_warps]
    return [c for c in configs if c in keep]


def autotune_gemm(kernel):
    return triton.autotune(configs=GEMM_CONFIGS, key=GEMM_TUNE_KEY,
                           prune_configs_by={"early_config_prune": prune_gemm_configs})(kernel)


# Interpreter: fixed, moderately large tiles (few python-level block ops -> fast tests).
INTERP_GEMM = dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, GROUP_M=4)


def gemm_block_r(R: int, f32: bool) -> int:
    """Rank chunk of the GEMM epilogues (>= 16 for the MMA; small for FMA-based fp32 dots)."""
    return min(block_r(R), 32 if f32 else 64)


def shrink_block_m(T: int, device) -> int:
    # Memory-bound pass over x: keep >= ~2 waves of programs on the GPU.
    if torch.device(device).type != "cuda":
        return 64
    for bm in (64, 32):
        if triton.cdiv(T, bm) >= 2 * num_sms(device):
            return bm
    return 16


@triton.jit(do_not_specialize=["seed"])
def _shrink_rowsq_kernel(
    x_ptr, a_ptr, xa_ptr, rowsq_ptr,
    M, K, R,
    stride_xm, stride_xk, stride_ar, stride_ak,
    p, drop_scale, seed,
    COMPUTE_ROWSQ: tl.constexpr, HAS_DROPOUT: tl.constexpr, F32_DOT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
):
    pid = tl.program_id(0)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = tl.arange(0, BLOCK_K)
    offs_r = tl.arange(0, BLOCK_R)  # rank padded to >= 16 for the MMA, masked beyond R
    m_mask = offs_m < M
    r_mask = offs_r < R
    x_ptrs = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm + offs_k[None, :] * stride_xk
    a_ptrs = a_ptr + offs_r[None, :] * stride_ar + offs_k[:, None] * stride_ak  # A^T tile (BLOCK_K, BLOCK_R)
    acc = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
    rsq = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_mask = offs_k < K - k0
        x = tl.load(x_ptrs, mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        a = tl.load(a_ptrs, mask=k_mask[:, None] & r_mask[None, :], other=0.0)
        xf = x.to(tl.float32)
        if COMPUTE_ROWSQ:
            # The norm rides on the tile already loaded for the shrink: no extra read of x.
            rsq += tl.sum(xf * xf, axis=1)
        if HAS_DROPOUT:
            keep = keep_mask(seed, offs_m, k0 + offs_k, K, p)
            x = tl.where(keep, xf * drop_scale, 0.0)
        acc = mma(to_dot(x, x_ptr, F32_DOT), to_dot(a, x_ptr, F32_DOT), acc, F32_DOT)
        x_ptrs += BLOCK_K * stride_xk
        a_ptrs += BLOCK_K * stride_ak
    xa_ptrs = xa_ptr + offs_m.to(tl.int64)[:, None] * R + offs_r[None, :]
    tl.store(xa_ptrs, acc, mask=m_mask[:, None] & r_mask[None, :])
    if COMPUTE_ROWSQ:
        tl.store(rowsq_ptr + offs_m, rsq, mask=m_mask)


@triton.jit
def _lora_fwd_kernel(
    x_ptr, w_ptr, bias_ptr, xa_ptr, b_ptr, y_ptr, rowsq_ptr,
    M, N, K, R,
    stride_xm, stride_xk, stride_wn, stride_wk, stride_bn, stride_br, stride_ym, stride_yn,
    scaling,
    HAS_LORA: tl.constexpr, HAS_BIAS: tl.constexpr, ROWSQ: tl.constexpr,
    HAS_DROPOUT: tl.constexpr,  # unused here (mask lives in the shrink); keeps tune keys uniform
    F32_DOT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    pid_m, pid_n = grouped_pid(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    # Wrapped row/col indices keep the main-loop loads in bounds without M/N masks (tutorial trick);
    # out-of-range rows/cols are dropped by the masked store.
    rows = offs_m % M
    cols = offs_n % N
    x_ptrs = x_ptr + rows.to(tl.int64)[:, None] * stride_xm + offs_k[None, :] * stride_xk
    w_ptrs = w_ptr + cols.to(tl.int64)[None, :] * stride_wn + offs_k[:, None] * stride_wk  # W^T tile
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    rsq = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_mask = offs_k < K - k0
        x = tl.load(x_ptrs, mask=k_mask[None, :], other=0.0)
        w = tl.load(w_ptrs, mask=k_mask[:, None], other=0.0)
        if ROWSQ:
            # Probe mode: the first column of programs already streams every x tile once.
            if pid_n == 0:
                xf = x.to(tl.float32)
                rsq += tl.sum(xf * xf, axis=1)
        acc = mma(to_dot(x, x_ptr, F32_DOT), to_dot(w, x_ptr, F32_DOT), acc, F32_DOT)
        x_ptrs += BLOCK_K * stride_xk
        w_ptrs += BLOCK_K * stride_wk
    if HAS_LORA:
        # Rank-r expand into the same accumulator: y is written once. Rank chunks of BLOCK_R
        # keep the epilogue operands in registers for large r.
        offs_r = tl.arange(0, BLOCK_R)
        for r0 in range(0, R, BLOCK_R):
            r_mask = offs_r < R - r0
            xa = tl.load(xa_ptr + rows.to(tl.int64)[:, None] * R + (r0 + offs_r)[None, :],
                         mask=r_mask[None, :], other=0.0)
            bt = tl.load(b_ptr + (r0 + offs_r)[:, None] * stride_br + cols.to(tl.int64)[None, :] * stride_bn,
                         mask=r_mask[:, None], other=0.0)
            acc = mma(to_dot(xa * scaling, x_ptr, F32_DOT), to_dot(bt, x_ptr, F32_DOT), acc, F32_DOT)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols).to(tl.float32)[None, :]
    m_mask = offs_m < M
    y_ptrs = y_ptr + offs_m.to(tl.int64)[:, None] * stride_ym + offs_n[None, :] * stride_yn
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=m_mask[:, None] & (offs_n < N)[None, :])
    if ROWSQ:
        if pid_n == 0:
            tl.store(rowsq_ptr + offs_m, rsq, mask=m_mask)


_lora_fwd_kernel_tuned = autotune_gemm(_lora_fwd_kernel)


@triton.jit(do_not_specialize=["seed"])
def _dropout_mask_kernel(out_ptr, M, K, p, drop_scale, seed, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    keep = keep_mask(seed, offs_m, offs_k, K, p)
    mask = (offs_m < M)[:, None] & (offs_k < K)[None, :]
    out = tl.where(keep, drop_scale, 0.0).to(tl.float32)
    tl.store(out_ptr + offs_m.to(tl.int64)[:, None] * K + offs_k[None, :], out, mask=mask)


def dropout_mask(shape, p: float, seed: int, device) -> torch.Tensor:
    """The fp32 keep mask (0 or 1/(1-p)) the kernels regenerate for a (T, K_in) input."""
    T, K = shape
    out = torch.empty((T, K), dtype=torch.float32, device=device)
    if p == 0.0:
        return out.fill_(1.0)
    check_triton_device(out, kernel=_dropout_mask_kernel)
    if T and K:
        grid = (triton.cdiv(T, 64), triton.cdiv(K, 64))
        _dropout_mask_kernel[grid](out, T, K, float(p), 1.0 / (1.0 - p), int(seed), BLOCK_M=64, BLOCK_K=64)
    return out


def _check_dropout(p: float) -> None:
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {p}")


def lora_forward(x2d, weight, bias, lora_A, lora_B, scaling, dropout_p=0.0, seed=0, compute_rowsq=True):
    """y = x @ W^T + b + s * ((x*m) @ A^T) @ B^T.  Returns (y, xa fp32 or None, rowsq fp32 or None).

    lora_A / lora_B None -> probe mode (plain linear, rowsq fused into the GEMM)."""
    if x2d.dim() != 2:
        raise ValueError(f"x2d must be 2-D, got shape {tuple(x2d.shape)}")
    has_lora = lora_A is not None
    if has_lora != (lora_B is not None):
        raise ValueError("lora_A and lora_B must both be given or both be None")
    _check_dropout(dropout_p)
    check_triton_device(x2d, weight, bias, lora_A, lora_B, kernel=_lora_fwd_kernel)
    T, K = x2d.shape
    N = weight.shape[0]
    dev = x2d.device
    y = torch.empty((T, N), dtype=x2d.dtype, device=dev)
    rowsq = torch.empty((T,), dtype=torch.float32, device=dev) if compute_rowsq else None
    R = lora_A.shape[0] if has_lora else 0
    xa = torch.empty((T, R), dtype=torch.float32, device=dev) if has_lora else None
    if T == 0:
        return y, xa, rowsq
    if K == 0:  # degenerate: nothing to reduce
        y.zero_()
        if bias is not None:
            y += bias.to(y.dtype)
        if has_lora:
            xa.zero_()
        if rowsq is not None:
            rowsq.zero_()
        return y, xa, rowsq
    f32 = f32_dot(x2d)
    BR = block_r(R) if has_lora else 16
    has_dropout = has_lora and dropout_p > 0.0
    drop_scale = 1.0 / (1.0 - dropout_p)
    if has_lora:
        bm = shrink_block_m(T, dev)
        _shrink_rowsq_kernel[(triton.cdiv(T, bm),)](
            x2d, lora_A, xa, rowsq if compute_rowsq else xa,
            T, K, R,
            x2d.stride(0), x2d.stride(1), lora_A.stride(0), lora_A.stride(1),
            float(dropout_p), drop_scale, int(seed),
            COMPUTE_ROWSQ=compute_rowsq, HAS_DROPOUT=has_dropout, F32_DOT=f32,
            BLOCK_M=bm, BLOCK_K=64, BLOCK_R=BR,
            **skinny_launch(x2d, BR),
        )
    dummy = y  # never dereferenced when its flag is off
    args = (
        x2d, weight, bias if bias is not None else dummy, xa if has_lora else dummy,
        lora_B if has_lora else dummy, y, rowsq if (compute_rowsq and not has_lora) else dummy,
        T, N, K, R,
        x2d.stride(0), x2d.stride(1), weight.stride(0), weight.stride(1),
        lora_B.stride(0) if has_lora else 0, lora_B.stride(1) if has_lora else 0,
        y.stride(0), y.stride(1),
        float(scaling),
    )
    flags = dict(HAS_LORA=has_lora, HAS_BIAS=bias is not None, ROWSQ=compute_rowsq and not has_lora,
                 HAS_DROPOUT=has_dropout, F32_DOT=f32, BLOCK_R=gemm_block_r(R, f32))
    if use_interpreter_path(x2d):
        grid = (triton.cdiv(T, INTERP_GEMM["BLOCK_M"]) * triton.cdiv(N, INTERP_GEMM["BLOCK_N"]),)
        _lora_fwd_kernel[grid](*args, **flags, **INTERP_GEMM)
    else:
        grid = lambda META: (triton.cdiv(T, META["BLOCK_M"]) * triton.cdiv(N, META["BLOCK_N"]),)  # noqa: E731
        _lora_fwd_kernel_tuned[grid](*args, **flags)
    return y, xa, rowsq


def lora_forward_reference(x2d, weight, bias, lora_A, lora_B, scaling, mask=None):
    """Textbook float64 formula; `mask` is the explicit dropout keep mask (None = no dropout).

    Returns (y, xa, rowsq) in float64 (xa None in probe mode)."""
    x = x2d.double()
    y = x @ weight.double().t()
    if bias is not None:
        y = y + bias.double()
    xa = None
    if lora_A is not None:
        xm = x * mask.double() if mask is not None else x
        xa = xm @ lora_A.double().t()
        y = y + scaling * (xa @ lora_B.double().t())
    return y, xa, (x * x).sum(dim=1)
