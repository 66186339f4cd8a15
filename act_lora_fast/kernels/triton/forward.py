"""Triton forward kernels for a LoRA linear layer.

    xa    = (x * m) @ A^T                      (T, r), fp32   -- shrink kernel, same pass computes rowsq
    y     = x @ W^T + b + s * xa @ B^T         (T, N)         -- one GEMM, expand added to its accumulator
    rowsq = sum_k x[t, k]^2                    (T,),  fp32    -- of the un-dropped x

m is the dropout keep mask (0 or 1/(1-p)), regenerated from tl.rand(seed, row * K + col).
"""
from typing import NamedTuple, Optional

import torch
import triton
import triton.language as tl

from .utils import (
    GEMM_CONFIGS_16,
    GEMM_CONFIGS_32,
    INTERP_BLOCK,
    INTERP_OPTIONS,
    ConfigTuner,
    block_r,
    cdiv,
    check_triton_device,
    device_guard,
    dot_path,
    gemm_block_r,
    grouped_pid,
    keep_mask,
    m_bucket,
    mma,
    rows_block,
    skinny_launch,
    to_dot,
)


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
    # int64 offsets: a column-major x has stride_xk = T, and K * T can pass 2**31.
    x_ptrs = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm + offs_k.to(tl.int64)[None, :] * stride_xk
    a_ptrs = a_ptr + offs_r[None, :] * stride_ar + offs_k.to(tl.int64)[:, None] * stride_ak  # A^T tile
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
    stride_xm, stride_xk, stride_wn, stride_wk, stride_bias, stride_bn, stride_br, stride_ym, stride_yn,
    scaling,
    HAS_LORA: tl.constexpr, HAS_BIAS: tl.constexpr, ROWSQ: tl.constexpr, F32_DOT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    pid_m, pid_n = grouped_pid(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K).to(tl.int64)
    # Wrapped row/col indices keep the main-loop loads in bounds without M/N masks (tutorial trick);
    # out-of-range rows/cols are dropped by the masked store.
    rows = (offs_m % M).to(tl.int64)
    cols = (offs_n % N).to(tl.int64)
    x_ptrs = x_ptr + rows[:, None] * stride_xm + offs_k[None, :] * stride_xk
    w_ptrs = w_ptr + cols[None, :] * stride_wn + offs_k[:, None] * stride_wk  # W^T tile
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
            xa = tl.load(xa_ptr + rows[:, None] * R + (r0 + offs_r)[None, :], mask=r_mask[None, :], other=0.0)
            bt = tl.load(b_ptr + (r0 + offs_r)[:, None] * stride_br + cols[None, :] * stride_bn,
                         mask=r_mask[:, None], other=0.0)
            acc = mma(to_dot(xa * scaling, x_ptr, F32_DOT), to_dot(bt, x_ptr, F32_DOT), acc, F32_DOT)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols * stride_bias).to(tl.float32)[None, :]
    m_mask = offs_m < M
    y_ptrs = y_ptr + offs_m.to(tl.int64)[:, None] * stride_ym + offs_n.to(tl.int64)[None, :] * stride_yn
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=m_mask[:, None] & (offs_n < N)[None, :])
    if ROWSQ:
        if pid_n == 0:
            tl.store(rowsq_ptr + offs_m, rsq, mask=m_mask)


def prune_forward_configs(configs, *, F32_DOT, BLOCK_R):
    """The dtype picks the tile set; the forward never drops (the mask lives in the shrink). A rank chunk of 64
    in the epilogue spills unless each thread holds at most 64 accumulator elements (sm_90 compile check)."""
    keep = GEMM_CONFIGS_32 if F32_DOT else GEMM_CONFIGS_16
    if BLOCK_R >= 64:
        keep = [c for c in keep if c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] <= 64 * 32 * c.num_warps]
    return [c for c in configs if c in keep]


FORWARD_TUNER = ConfigTuner(GEMM_CONFIGS_16 + GEMM_CONFIGS_32, prune_forward_configs)


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
        grid = (cdiv(T, 64), cdiv(K, 64))
        with device_guard(out):
            _dropout_mask_kernel[grid](out, T, K, float(p), 1.0 / (1.0 - p), int(seed), BLOCK_M=64, BLOCK_K=64)
    return out


class ForwardResult(NamedTuple):
    y: torch.Tensor
    xa: Optional[torch.Tensor]  # (T, r) fp32, unscaled (x * m) @ A^T; None in probe mode
    rowsq: Optional[torch.Tensor]  # (T,) fp32 sum_k x^2; None unless compute_rowsq


def check_forward_inputs(x, weight, bias=None, lora_A=None, lora_B=None, dropout_p=0.0):
    """What the kernels assume: a 2-D x, lora_A and lora_B given together, dropout_p in [0, 1), and all
    tensors on one device where Triton runs."""
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D, got shape {tuple(x.shape)}")
    if (lora_A is None) != (lora_B is None):
        raise ValueError("lora_A and lora_B must both be given or both be None")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    check_triton_device(x, weight, bias, lora_A, lora_B, kernel=_lora_fwd_kernel)


def lora_forward(x, *, weight, bias=None, lora_A=None, lora_B=None, scaling=1.0, dropout_p=0.0, seed=0,
                 compute_rowsq=True, checked=False) -> ForwardResult:
    """y = x @ W^T + b + s * ((x*m) @ A^T) @ B^T for a 2-D x (T, K_in).

    lora_A / lora_B None -> probe mode (plain linear, rowsq fused into the GEMM). `checked`: the caller has
    already run `check_forward_inputs` or its equivalent (`act_lora_fast.functional.lora_linear` checks shapes,
    dtypes and one device, and that the kernels run there)."""
    has_lora = lora_A is not None
    if not checked:
        check_forward_inputs(x, weight, bias, lora_A, lora_B, dropout_p)
    T, K = x.shape
    N = weight.shape[0]
    R = lora_A.shape[0] if has_lora else 0
    dev = x.device
    y = torch.empty(T, N, dtype=x.dtype, device=dev)  # varargs sizes: ~0.3 µs less than a tuple per call
    rowsq = torch.empty(T, dtype=torch.float32, device=dev) if compute_rowsq else None
    xa = torch.empty(T, R, dtype=torch.float32, device=dev) if has_lora else None
    if T == 0:
        return ForwardResult(y, xa, rowsq)
    if K == 0:  # degenerate: nothing to reduce
        if bias is not None:
            y.copy_(bias.expand(T, N))
        else:
            y.zero_()
        for t in (xa, rowsq):
            if t is not None:
                t.zero_()
        return ForwardResult(y, xa, rowsq)
    interp, f32 = dot_path(x)
    stride_xm, stride_xk = x.stride()
    with device_guard(x):
        if has_lora:
            BR = block_r(R)
            bm = rows_block(T, dev)
            stride_ar, stride_ak = lora_A.stride()
            _shrink_rowsq_kernel[(cdiv(T, bm),)](
                x, lora_A, xa, rowsq if compute_rowsq else xa,
                T, K, R,
                stride_xm, stride_xk, stride_ar, stride_ak,
                float(dropout_p), 1.0 / (1.0 - dropout_p), int(seed),
                COMPUTE_ROWSQ=compute_rowsq, HAS_DROPOUT=dropout_p > 0.0, F32_DOT=f32,
                BLOCK_M=bm, BLOCK_K=64, BLOCK_R=BR,
                **({} if interp else skinny_launch(BR)),
            )
            stride_bn, stride_br = lora_B.stride()
        else:
            stride_bn = stride_br = 0
        stride_wn, stride_wk = weight.stride()
        stride_ym, stride_yn = y.stride()
        args = (
            x, weight, bias if bias is not None else y, xa if has_lora else y, lora_B if has_lora else y, y,
            rowsq if (compute_rowsq and not has_lora) else y,  # y: never dereferenced when its flag is off
            T, N, K, R,
            stride_xm, stride_xk, stride_wn, stride_wk, bias.stride(0) if bias is not None else 0,
            stride_bn, stride_br, stride_ym, stride_yn,
            float(scaling),
        )
        rowsq_in_gemm = compute_rowsq and not has_lora
        BR_gemm = gemm_block_r(R, f32)
        if interp:
            _lora_fwd_kernel[(cdiv(T, INTERP_BLOCK) * cdiv(N, INTERP_BLOCK),)](
                *args, HAS_LORA=has_lora, HAS_BIAS=bias is not None, ROWSQ=rowsq_in_gemm, F32_DOT=f32,
                BLOCK_R=BR_gemm, **INTERP_OPTIONS)
        else:
            def launch(kwargs):
                _lora_fwd_kernel[(cdiv(T, kwargs["BLOCK_M"]) * cdiv(N, kwargs["BLOCK_N"]),)](*args, **kwargs)

            key = (m_bucket(T), N, K, x.dtype, has_lora, bias is not None, rowsq_in_gemm, BR_gemm)
            # a seen key: one lookup; the flags dict below is built for a new key only
            kwargs = FORWARD_TUNER.launches.get(key) or FORWARD_TUNER.launch_kwargs(
                key, launch, dict(HAS_LORA=has_lora, HAS_BIAS=bias is not None, ROWSQ=rowsq_in_gemm, F32_DOT=f32,
                                  BLOCK_R=BR_gemm), F32_DOT=f32, BLOCK_R=BR_gemm)
            launch(kwargs)
    return ForwardResult(y, xa, rowsq)
