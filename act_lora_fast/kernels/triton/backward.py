"""Triton backward kernels for a LoRA linear layer (the adapter's gradients and dx; see autograd.py for W, b).

    dyB      = dy @ B                          (T, r), fp32   -- same pass: sum_n dy[t, n]^2 if asked
    dx       = dy @ W + s * (dyB @ A) * m      one GEMM; rank-r product + mask in its epilogue
    dA       = s * dyB^T @ (x * m)             (r, K_in)  reduced over T (split-T fp32 partials, no atomics)
    dB       = s * dy^T @ xa                   (N_out, r) reduced over T (split-T fp32 partials, no atomics)

The dropout mask is never stored: it is regenerated with tl.rand(seed, row * K_in + col).
"""
import functools
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
    num_sms,
    rows_block,
    skinny_launch,
    to_dot,
)

# Tiles of the skinny (rank-r) reduction kernels; fixed, they are memory bound.
RED_BLOCK_T = 64
DY_PASS_LAUNCH = dict(num_warps=8, num_stages=3)  # the dB accumulator is BLOCK_N x BLOCK_R fp32
RED_BLOCK_C = 64


@triton.jit
def _dy_rows_kernel(
    dy_ptr, b_ptr, dyb_ptr, dy_rowsq_ptr,
    M, N, R,
    stride_dym, stride_dyn, stride_bn, stride_br,
    HAS_DYB: tl.constexpr, DY_ROWSQ: tl.constexpr, F32_DOT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
):
    # One pass over whole rows of dy: dy @ B and/or each row's sum of squares (the update score's ||dy_t||^2).
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N).to(tl.int64)
    offs_r = tl.arange(0, BLOCK_R)
    m_mask = offs_m < M
    r_mask = offs_r < R
    dy_ptrs = dy_ptr + offs_m.to(tl.int64)[:, None] * stride_dym + offs_n[None, :] * stride_dyn
    b_ptrs = b_ptr + offs_n[:, None] * stride_bn + offs_r[None, :] * stride_br
    acc = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
    rsq = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        n_mask = offs_n < N - n0
        dy = tl.load(dy_ptrs, mask=m_mask[:, None] & n_mask[None, :], other=0.0)
        if DY_ROWSQ:
            dyf = dy.to(tl.float32)
            rsq += tl.sum(dyf * dyf, axis=1)
        if HAS_DYB:
            b = tl.load(b_ptrs, mask=n_mask[:, None] & r_mask[None, :], other=0.0)
            acc = mma(to_dot(dy, dy_ptr, F32_DOT), to_dot(b, dy_ptr, F32_DOT), acc, F32_DOT)
        dy_ptrs += BLOCK_N * stride_dyn
        b_ptrs += BLOCK_N * stride_bn
    if HAS_DYB:
        tl.store(dyb_ptr + offs_m.to(tl.int64)[:, None] * R + offs_r[None, :], acc,
                 mask=m_mask[:, None] & r_mask[None, :])
    if DY_ROWSQ:
        tl.store(dy_rowsq_ptr + offs_m, rsq, mask=m_mask)


@triton.jit
def _dy_pass_kernel(
    dy_ptr, b_ptr, xa_ptr, dyb_part_ptr, db_part_ptr, rowsq_part_ptr,
    M, N, R,
    stride_dym, stride_dyn, stride_bn, stride_br, rows_per_split,
    scaling,
    HAS_DYB: tl.constexpr, HAS_DB: tl.constexpr, DY_ROWSQ: tl.constexpr, F32_DOT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
):
    # The one pass over dy. Program (pid_n, pid_s) reads the dy tiles of column block pid_n and row split
    # pid_s once, and from each tile takes
    #   dy @ B      over its columns -> dyb_part[pid_n] (rows x r), summed over column blocks afterwards;
    #   dy^T @ xa   over its rows    -> db_part[pid_s]  (cols x r), summed over row splits afterwards;
    #   sum dy^2    over its columns -> rowsq_part[pid_n] (rows).
    # Every partial element is written by exactly one program: deterministic, no atomics.
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_r = tl.arange(0, BLOCK_R)
    n_mask = offs_n < N
    r_mask = offs_r < R
    if HAS_DYB:  # B's rows for this column block: loaded once, used by every row tile
        b = tl.load(b_ptr + offs_n.to(tl.int64)[:, None] * stride_bn + offs_r[None, :] * stride_br,
                    mask=n_mask[:, None] & r_mask[None, :], other=0.0)
    t_start = pid_s * rows_per_split
    t_end = tl.minimum(t_start + rows_per_split, M)
    db_acc = tl.zeros((BLOCK_N, BLOCK_R), dtype=tl.float32)
    for t0 in range(t_start, t_end, BLOCK_M):
        offs_t = t0 + tl.arange(0, BLOCK_M)
        t_mask = offs_t < t_end
        rows = offs_t.to(tl.int64)
        dy = tl.load(dy_ptr + rows[:, None] * stride_dym + offs_n.to(tl.int64)[None, :] * stride_dyn,
                     mask=t_mask[:, None] & n_mask[None, :], other=0.0)
        if HAS_DYB:
            g = mma(to_dot(dy, dy_ptr, F32_DOT), to_dot(b, dy_ptr, F32_DOT),
                    tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32), F32_DOT)
            tl.store(dyb_part_ptr + pid_n.to(tl.int64) * M * R + rows[:, None] * R + offs_r[None, :], g,
                     mask=t_mask[:, None] & r_mask[None, :])
        if DY_ROWSQ:
            dyf = dy.to(tl.float32)
            tl.store(rowsq_part_ptr + pid_n.to(tl.int64) * M + rows, tl.sum(dyf * dyf, axis=1), mask=t_mask)
        if HAS_DB:
            xa = tl.load(xa_ptr + rows[:, None] * R + offs_r[None, :], mask=t_mask[:, None] & r_mask[None, :],
                         other=0.0)
            db_acc = mma(to_dot(tl.trans(dy), dy_ptr, F32_DOT), to_dot(xa, dy_ptr, F32_DOT), db_acc, F32_DOT)
    if HAS_DB:
        out = db_part_ptr + pid_s.to(tl.int64) * N * R + offs_n.to(tl.int64)[:, None] * R + offs_r[None, :]
        tl.store(out, db_acc * scaling, mask=n_mask[:, None] & r_mask[None, :])


@triton.jit(do_not_specialize=["seed"])
def _lora_dx_kernel(
    dy_ptr, w_ptr, dyb_ptr, a_ptr, dx_ptr, dy_rowsq_ptr,
    M, N, K, R,  # M = T, N = K_in (output cols), K = N_out (reduction)
    stride_dym, stride_dyk, stride_wk, stride_wn, stride_ar, stride_an, stride_dxm, stride_dxn,
    scaling, p, drop_scale, seed,
    HAS_LORA: tl.constexpr, HAS_DROPOUT: tl.constexpr, DY_ROWSQ: tl.constexpr, F32_DOT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    pid_m, pid_n = grouped_pid(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K).to(tl.int64)
    rows = (offs_m % M).to(tl.int64)  # wrapped: unmasked main-loop loads, the store drops the extras
    cols = (offs_n % N).to(tl.int64)
    dy_ptrs = dy_ptr + rows[:, None] * stride_dym + offs_k[None, :] * stride_dyk
    w_ptrs = w_ptr + offs_k[:, None] * stride_wk + cols[None, :] * stride_wn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    rsq = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_mask = offs_k < K - k0
        dy = tl.load(dy_ptrs, mask=k_mask[None, :], other=0.0)
        w = tl.load(w_ptrs, mask=k_mask[:, None], other=0.0)
        if DY_ROWSQ:
            # Probe mode: the first column of programs already streams whole rows of dy.
            if pid_n == 0:
                dyf = dy.to(tl.float32)
                rsq += tl.sum(dyf * dyf, axis=1)
        acc = mma(to_dot(dy, dy_ptr, F32_DOT), to_dot(w, dy_ptr, F32_DOT), acc, F32_DOT)
        dy_ptrs += BLOCK_K * stride_dyk
        w_ptrs += BLOCK_K * stride_wk
    if HAS_LORA:
        # s * dyB @ A in rank chunks of BLOCK_R; the mask only touches this LoRA term, so with
        # dropout it gets its own tile and is masked before joining the base accumulator.
        if HAS_DROPOUT:
            lo = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        else:
            lo = acc
        offs_r = tl.arange(0, BLOCK_R)
        for r0 in range(0, R, BLOCK_R):
            r_mask = offs_r < R - r0
            g = tl.load(dyb_ptr + rows[:, None] * R + (r0 + offs_r)[None, :], mask=r_mask[None, :], other=0.0)
            a = tl.load(a_ptr + (r0 + offs_r)[:, None] * stride_ar + cols[None, :] * stride_an,
                        mask=r_mask[:, None], other=0.0)
            lo = mma(to_dot(g * scaling, dy_ptr, F32_DOT), to_dot(a, dy_ptr, F32_DOT), lo, F32_DOT)
        if HAS_DROPOUT:
            keep = keep_mask(seed, offs_m, offs_n, N, p)
            acc += tl.where(keep, lo * drop_scale, 0.0)
        else:
            acc = lo
    m_mask = offs_m < M
    dx_ptrs = dx_ptr + offs_m.to(tl.int64)[:, None] * stride_dxm + offs_n.to(tl.int64)[None, :] * stride_dxn
    tl.store(dx_ptrs, acc.to(dx_ptr.dtype.element_ty), mask=m_mask[:, None] & (offs_n < N)[None, :])
    if DY_ROWSQ:
        if pid_n == 0:
            tl.store(dy_rowsq_ptr + offs_m, rsq, mask=m_mask)


def prune_dx_configs(configs, *, F32_DOT, HAS_DROPOUT, BLOCK_R):
    """Tiles that compile without spills on sm_90 (benchmarks/triton_sm90_compile_check.py): with dropout or
    a rank chunk of 64, at most 64 accumulator elements per thread (Philox state / rank-64 operands); with
    both, 8 warps to hold them."""
    keep = GEMM_CONFIGS_32 if F32_DOT else GEMM_CONFIGS_16
    if HAS_DROPOUT or BLOCK_R >= 64:
        keep = [c for c in keep if c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] <= 64 * 32 * c.num_warps]
    if HAS_DROPOUT and BLOCK_R >= 64:
        keep = [c for c in keep if c.num_warps == 8]
    return [c for c in configs if c in keep]


DX_TUNER = ConfigTuner(GEMM_CONFIGS_16 + GEMM_CONFIGS_32, prune_dx_configs)


@triton.jit(do_not_specialize=["seed"])
def _lora_dA_kernel(
    dyb_ptr, x_ptr, part_ptr,
    M, K, R,
    stride_xm, stride_xk, rows_per_split,
    scaling, p, drop_scale, seed,
    HAS_DROPOUT: tl.constexpr, F32_DOT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
):
    # Program (pid_k, pid_s) reduces rows [pid_s * rows_per_split, ...) for one K_in block into
    # its own fp32 partial: deterministic, no atomics.
    pid_k = tl.program_id(0)
    pid_s = tl.program_id(1)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_r = tl.arange(0, BLOCK_R)
    k_mask = offs_k < K
    r_mask = offs_r < R
    t_start = pid_s * rows_per_split
    t_end = tl.minimum(t_start + rows_per_split, M)
    acc = tl.zeros((BLOCK_R, BLOCK_K), dtype=tl.float32)
    for t0 in range(t_start, t_end, BLOCK_M):
        offs_t = t0 + tl.arange(0, BLOCK_M)
        t_mask = offs_t < t_end
        g = tl.load(dyb_ptr + offs_t.to(tl.int64)[None, :] * R + offs_r[:, None],  # dyB^T tile (BLOCK_R, BLOCK_M)
                    mask=r_mask[:, None] & t_mask[None, :], other=0.0)
        x = tl.load(x_ptr + offs_t.to(tl.int64)[:, None] * stride_xm + offs_k.to(tl.int64)[None, :] * stride_xk,
                    mask=t_mask[:, None] & k_mask[None, :], other=0.0)
        if HAS_DROPOUT:
            keep = keep_mask(seed, offs_t, offs_k, K, p)
            x = tl.where(keep, x.to(tl.float32) * drop_scale, 0.0)
        acc = mma(to_dot(g, x_ptr, F32_DOT), to_dot(x, x_ptr, F32_DOT), acc, F32_DOT)
    out = part_ptr + pid_s.to(tl.int64) * R * K + offs_r.to(tl.int64)[:, None] * K + offs_k[None, :]
    tl.store(out, acc * scaling, mask=r_mask[:, None] & k_mask[None, :])


@functools.lru_cache(maxsize=4096)  # pure, asked on every backward
def _split_t(T: int, n_col_blocks: int, device) -> tuple:
    """(num_splits, rows_per_split) so the T-reductions fill the GPU (>= ~2 programs per SM)."""
    row_blocks = cdiv(T, RED_BLOCK_T)
    splits = max(1, min(row_blocks, (2 * num_sms(device)) // max(1, n_col_blocks)))
    rows_per_split = cdiv(row_blocks, splits) * RED_BLOCK_T  # whole tiles per split
    return cdiv(T, rows_per_split), rows_per_split


def _partials(count, *shape, device):
    """A buffer for `count` fp32 partials of `shape`; with one partial (the common small case) the result's
    own shape, so the kernel writes the sum straight into it and nothing is summed or indexed afterwards."""
    if count == 1:
        return torch.empty(*shape, dtype=torch.float32, device=device)
    return torch.empty(count, *shape, dtype=torch.float32, device=device)


def _dy_pass(dy, lora_B, xa, *, R, BR, f32, scaling, with_rows, with_rowsq, interp):
    """dB (and, when asked, dy @ B and the row sums of dy^2) from one read of dy: see _dy_pass_kernel.
    Returns (dy @ B or None, dB in lora_B's dtype, row sums or None)."""
    T, N = dy.shape
    dev = dy.device
    # Wide column blocks keep the (column blocks x T x r) partials of dy @ B small; the dB accumulator
    # (BLOCK_N x BLOCK_R fp32) bounds the width.
    block_n = 64 if interp else min(256, 8192 // BR)
    n_cb = cdiv(N, block_n)
    splits, rows_per_split = _split_t(T, n_cb, dev)
    db_part = _partials(splits, N, R, device=dev)
    dyb_part = _partials(n_cb, T, R, device=dev) if with_rows else db_part  # db_part: flag off, never written
    rowsq_part = _partials(n_cb, T, device=dev) if with_rowsq else db_part
    stride_dym, stride_dyn = dy.stride()
    stride_bn, stride_br = lora_B.stride()
    _dy_pass_kernel[(n_cb, splits)](
        dy, lora_B, xa, dyb_part, db_part, rowsq_part,
        T, N, R,
        stride_dym, stride_dyn, stride_bn, stride_br, rows_per_split,
        float(scaling),
        HAS_DYB=with_rows, HAS_DB=True, DY_ROWSQ=with_rowsq, F32_DOT=f32,
        BLOCK_M=RED_BLOCK_T // 2, BLOCK_N=block_n, BLOCK_R=BR,
        **({} if interp else DY_PASS_LAUNCH),
    )
    # Partials are summed over their first dim in a fixed order (deterministic).
    dB = db_part if splits == 1 else db_part.sum(0)
    if dB.dtype != lora_B.dtype:
        dB = dB.to(lora_B.dtype)
    dyb = (dyb_part if n_cb == 1 else dyb_part.sum(0)) if with_rows else None
    rowsq = (rowsq_part if n_cb == 1 else rowsq_part.sum(0)) if with_rowsq else None
    return dyb, dB, rowsq


class BackwardResult(NamedTuple):
    dx: Optional[torch.Tensor]
    dA: Optional[torch.Tensor]
    dB: Optional[torch.Tensor]
    dy_rowsq: Optional[torch.Tensor]  # (T,) fp32 sum_n dy[t, n]^2 when compute_dy_rowsq


def lora_backward(dy, *, weight, x=None, lora_A=None, lora_B=None, xa=None, scaling=1.0, dropout_p=0.0, seed=0,
                  needs_dx=True, needs_dA=False, needs_dB=False, compute_dy_rowsq=False,
                  checked=False) -> BackwardResult:
    """Grads of y = x @ W^T + b + s * ((x*m) @ A^T) @ B^T for a 2-D dy (T, N_out); None where not asked.

    `x` is only read for dA and `xa` (fp32, from lora_forward) only for dB; lora_A/lora_B None -> probe mode,
    dx = dy @ W. `compute_dy_rowsq` also returns each row's sum of squares of dy, from a pass already made.
    `checked`: the tensors come from a forward that `lora_forward` checked (autograd's backward), so the device
    and argument checks are skipped."""
    has_lora = lora_A is not None
    needs_dA = needs_dA and has_lora
    needs_dB = needs_dB and has_lora
    if not checked:
        check_triton_device(dy, x, weight, lora_A, lora_B, xa, kernel=_lora_dx_kernel)
        if needs_dA and x is None:
            raise ValueError("x is required for dA")
        if needs_dB and xa is None:
            raise ValueError("xa (from lora_forward) is required for dB")
    T, N = dy.shape
    K = weight.shape[1]
    R = lora_A.shape[0] if has_lora else 0
    dev = dy.device
    dx = torch.empty(T, K, dtype=dy.dtype, device=dev) if needs_dx else None
    if T == 0 or N == 0 or K == 0:
        if dx is not None:
            dx.zero_()
        dy_rowsq = dy.float().square().sum(1) if compute_dy_rowsq else None  # no kernel pass to ride on
        dA = torch.zeros_like(lora_A) if needs_dA else None
        dB = torch.zeros_like(lora_B) if needs_dB else None
        return BackwardResult(dx, dA, dB, dy_rowsq)
    interp, f32 = dot_path(dy)
    BR = block_r(R) if has_lora else 16
    launch_skinny = {} if interp else skinny_launch(BR)
    has_dropout = has_lora and dropout_p > 0.0
    drop_scale = 1.0 / (1.0 - dropout_p)
    # In probe mode with dx the dx GEMM reads whole rows of dy and reduces the norms; else a pass over dy does.
    rowsq_in_dx = compute_dy_rowsq and needs_dx and not has_lora
    needs_rows = has_lora and (needs_dx or needs_dA)  # dy @ B, for dx's LoRA term and dA
    rowsq_in_pass = compute_dy_rowsq and not rowsq_in_dx
    # dy @ B and dB from one read of dy when the rank is small; at larger ranks the per-column-block partials
    # of dy @ B (T x r each) would cost more than the second read of dy they save.
    fused = needs_dB and (needs_rows or rowsq_in_pass) and BR <= 32
    dy_rowsq = torch.empty(T, dtype=torch.float32, device=dev) if rowsq_in_dx else None
    dyb = dA = dB = None
    stride_dym, stride_dyn = dy.stride()
    if has_lora:
        stride_bn, stride_br = lora_B.stride()
        stride_ar, stride_an = lora_A.stride()
    else:
        stride_bn = stride_br = stride_ar = stride_an = 0

    with device_guard(dy):
        if (needs_rows or rowsq_in_pass) and not fused:
            dyb = torch.empty(T, R, dtype=torch.float32, device=dev) if needs_rows else None
            dy_rowsq = torch.empty(T, dtype=torch.float32, device=dev) if rowsq_in_pass else dy_rowsq
            bm = rows_block(T, dev)
            _dy_rows_kernel[(cdiv(T, bm),)](
                dy, lora_B if has_lora else dy, dyb if needs_rows else dy, dy_rowsq if rowsq_in_pass else dy,
                T, N, R,
                stride_dym, stride_dyn, stride_bn, stride_br,
                HAS_DYB=needs_rows, DY_ROWSQ=rowsq_in_pass, F32_DOT=f32,
                BLOCK_M=bm, BLOCK_N=64, BLOCK_R=BR, **launch_skinny,
            )
        if needs_dB:
            dyb_f, dB, rowsq_f = _dy_pass(dy, lora_B, xa, R=R, BR=BR, f32=f32, scaling=scaling,
                                          with_rows=fused and needs_rows, with_rowsq=fused and rowsq_in_pass,
                                          interp=interp)
            if fused:
                dyb, dy_rowsq = (dyb_f if needs_rows else None), (rowsq_f if rowsq_in_pass else dy_rowsq)

        if needs_dx:
            stride_wk, stride_wn = weight.stride()
            stride_dxm, stride_dxn = dx.stride()
            args = (
                dy, weight, dyb if has_lora else dx, lora_A if has_lora else dx, dx,
                dy_rowsq if rowsq_in_dx else dx,  # dx: never dereferenced when its flag is off
                T, K, N, R,
                stride_dym, stride_dyn, stride_wk, stride_wn, stride_ar, stride_an, stride_dxm, stride_dxn,
                float(scaling), float(dropout_p), drop_scale, int(seed),
            )
            BR_gemm = gemm_block_r(R, f32)
            if interp:
                _lora_dx_kernel[(cdiv(T, INTERP_BLOCK) * cdiv(K, INTERP_BLOCK),)](
                    *args, HAS_LORA=has_lora, HAS_DROPOUT=has_dropout, DY_ROWSQ=rowsq_in_dx, F32_DOT=f32,
                    BLOCK_R=BR_gemm, **INTERP_OPTIONS)
            else:
                def launch(kwargs):
                    _lora_dx_kernel[(cdiv(T, kwargs["BLOCK_M"]) * cdiv(K, kwargs["BLOCK_N"]),)](*args, **kwargs)

                key = (m_bucket(T), N, K, dy.dtype, has_lora, has_dropout, rowsq_in_dx, BR_gemm)
                # a seen key: one lookup; the flags dict below is built for a new key only
                kwargs = DX_TUNER.launches.get(key) or DX_TUNER.launch_kwargs(
                    key, launch, dict(HAS_LORA=has_lora, HAS_DROPOUT=has_dropout, DY_ROWSQ=rowsq_in_dx,
                                      F32_DOT=f32, BLOCK_R=BR_gemm), F32_DOT=f32, HAS_DROPOUT=has_dropout,
                    BLOCK_R=BR_gemm)
                launch(kwargs)

        if needs_dA:
            f32_x = f32 if x.dtype is dy.dtype else dot_path(x)[1]  # x and dy share a device
            fma_dots = f32_x and not interp
            block_k = RED_BLOCK_C // 2 if fma_dots and BR >= 128 else RED_BLOCK_C
            n_kb = cdiv(K, block_k)
            splits, rows_per_split = _split_t(T, n_kb, dev)
            part = _partials(splits, R, K, device=dev)
            stride_xm, stride_xk = x.stride()
            _lora_dA_kernel[(n_kb, splits)](
                dyb, x, part, T, K, R,
                stride_xm, stride_xk, rows_per_split,
                float(scaling), float(dropout_p), drop_scale, int(seed),
                HAS_DROPOUT=has_dropout, F32_DOT=f32_x,
                # FMA-based fp32 dots + Philox state: a shorter T tile keeps them out of local memory, and
                # at rank 128 a narrower K tile too.
                BLOCK_M=RED_BLOCK_T // 2 if fma_dots else RED_BLOCK_T,
                BLOCK_K=block_k, BLOCK_R=BR, **launch_skinny,
            )
            dA = part if splits == 1 else part.sum(0)
            if dA.dtype != lora_A.dtype:
                dA = dA.to(lora_A.dtype)

    return BackwardResult(dx, dA, dB, dy_rowsq)
