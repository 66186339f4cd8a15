"""Triton backward kernels for a LoRA linear layer (W and bias frozen).

    dyB = dy @ B                          (T, r), fp32
    dx  = dy @ W + s * (dyB @ A) * m      one GEMM; rank-r product + mask in its epilogue
    dA  = s * dyB^T @ (x * m)             (r, K_in)  reduced over T (split-T fp32 partials, no atomics)
    dB  = s * dy^T @ xa                   (N_out, r) reduced over T (split-T fp32 partials, no atomics)

The dropout mask is never stored: it is regenerated with tl.rand(seed, row * K_in + col).
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
from .triton_forward import INTERP_GEMM, autotune_gemm, gemm_block_r, shrink_block_m

# Tiles of the skinny (rank-r) reduction kernels; fixed, they are memory bound.
RED_BLOCK_T = 64
RED_BLOCK_C = 64


@triton.jit
def _dyb_kernel(
    dy_ptr, b_ptr, dyb_ptr,
    M, N, R,
    stride_dym, stride_dyn, stride_bn, stride_br,
    F32_DOT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
):
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_r = tl.arange(0, BLOCK_R)
    m_mask = offs_m < M
    r_mask = offs_r < R
    dy_ptrs = dy_ptr + offs_m.to(tl.int64)[:, None] * stride_dym + offs_n[None, :] * stride_dyn
    b_ptrs = b_ptr + offs_n[:, None] * stride_bn + offs_r[None, :] * stride_br
    acc = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        n_mask = offs_n < N - n0
        dy = tl.load(dy_ptrs, mask=m_mask[:, None] & n_mask[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=n_mask[:, None] & r_mask[None, :], other=0.0)
        acc = mma(to_dot(dy, dy_ptr, F32_DOT), to_dot(b, dy_ptr, F32_DOT), acc, F32_DOT)
        dy_ptrs += BLOCK_N * stride_dyn
        b_ptrs += BLOCK_N * stride_bn
    tl.store(dyb_ptr + offs_m.to(tl.int64)[:, None] * R + offs_r[None, :], acc,
             mask=m_mask[:, None] & r_mask[None, :])


@triton.jit(do_not_specialize=["seed"])
def _lora_dx_kernel(
    dy_ptr, w_ptr, dyb_ptr, a_ptr, dx_ptr,
    M, N, K, R,  # M = T, N = K_in (output cols), K = N_out (reduction)
    stride_dym, stride_dyk, stride_wk, stride_wn, stride_ar, stride_an, stride_dxm, stride_dxn,
    scaling, p, drop_scale, seed,
    HAS_LORA: tl.constexpr, HAS_BIAS: tl.constexpr, ROWSQ: tl.constexpr, HAS_DROPOUT: tl.constexpr,
    F32_DOT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    # HAS_BIAS / ROWSQ are unused: they only exist so the forward's autotune key list applies.
    pid_m, pid_n = grouped_pid(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    rows = offs_m % M  # wrapped: unmasked main-loop loads, the store drops the extras
    cols = offs_n % N
    dy_ptrs = dy_ptr + rows.to(tl.int64)[:, None] * stride_dym + offs_k[None, :] * stride_dyk
    w_ptrs = w_ptr + offs_k[:, None] * stride_wk + cols.to(tl.int64)[None, :] * stride_wn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_mask = offs_k < K - k0
        dy = tl.load(dy_ptrs, mask=k_mask[None, :], other=0.0)
        w = tl.load(w_ptrs, mask=k_mask[:, None], other=0.0)
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
            g = tl.load(dyb_ptr + rows.to(tl.int64)[:, None] * R + (r0 + offs_r)[None, :],
                        mask=r_mask[None, :], other=0.0)
            a = tl.load(a_ptr + (r0 + offs_r)[:, None] * stride_ar + cols.to(tl.int64)[None, :] * stride_an,
                        mask=r_mask[:, None], other=0.0)
            lo = mma(to_dot(g * scaling, dy_ptr, F32_DOT), to_dot(a, dy_ptr, F32_DOT), lo, F32_DOT)
        if HAS_DROPOUT:
            keep = keep_mask(seed, offs_m, offs_n, N, p)
            acc += tl.where(keep, lo * drop_scale, 0.0)
        else:
            acc = lo
    dx_ptrs = dx_ptr + offs_m.to(tl.int64)[:, None] * stride_dxm + offs_n[None, :] * stride_dxn
    tl.store(dx_ptrs, acc.to(dx_ptr.dtype.element_ty), mask=(offs_m < M)[:, None] & (offs_n < N)[None, :])


_lora_dx_kernel_tuned = autotune_gemm(_lora_dx_kernel)


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
        x = tl.load(x_ptr + offs_t.to(tl.int64)[:, None] * stride_xm + offs_k[None, :] * stride_xk,
                    mask=t_mask[:, None] & k_mask[None, :], other=0.0)
        if HAS_DROPOUT:
            keep = keep_mask(seed, offs_t, offs_k, K, p)
            x = tl.where(keep, x.to(tl.float32) * drop_scale, 0.0)
        acc = mma(to_dot(g, x_ptr, F32_DOT), to_dot(x, x_ptr, F32_DOT), acc, F32_DOT)
    out = part_ptr + pid_s.to(tl.int64) * R * K + offs_r[:, None] * K + offs_k[None, :]
    tl.store(out, acc * scaling, mask=r_mask[:, None] & k_mask[None, :])


@triton.jit
def _lora_dB_kernel(
    dy_ptr, xa_ptr, part_ptr,
    M, N, R,
    stride_dym, stride_dyn, rows_per_split,
    scaling,
    F32_DOT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
):
    # Same split-T scheme as dA: program (pid_n, pid_s) -> fp32 partial of one N_out block.
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_r = tl.arange(0, BLOCK_R)
    n_mask = offs_n < N
    r_mask = offs_r < R
    t_start = pid_s * rows_per_split
    t_end = tl.minimum(t_start + rows_per_split, M)
    acc = tl.zeros((BLOCK_N, BLOCK_R), dtype=tl.float32)
    for t0 in range(t_start, t_end, BLOCK_M):
        offs_t = t0 + tl.arange(0, BLOCK_M)
        t_mask = offs_t < t_end
        dy = tl.load(dy_ptr + offs_t.to(tl.int64)[None, :] * stride_dym + offs_n[:, None] * stride_dyn,  # dy^T
                     mask=n_mask[:, None] & t_mask[None, :], other=0.0)
        xa = tl.load(xa_ptr + offs_t.to(tl.int64)[:, None] * R + offs_r[None, :],
                     mask=t_mask[:, None] & r_mask[None, :], other=0.0)
        acc = mma(to_dot(dy, dy_ptr, F32_DOT), to_dot(xa, dy_ptr, F32_DOT), acc, F32_DOT)
    out = part_ptr + pid_s.to(tl.int64) * N * R + offs_n[:, None] * R + offs_r[None, :]
    tl.store(out, acc * scaling, mask=n_mask[:, None] & r_mask[None, :])


def _split_t(T: int, n_col_blocks: int, device) -> tuple:
    """(num_splits, rows_per_split) so the T-reductions fill the GPU (>= ~2 programs per SM)."""
    row_blocks = triton.cdiv(T, RED_BLOCK_T)
    splits = max(1, min(row_blocks, (2 * num_sms(device)) // max(1, n_col_blocks)))
    rows_per_split = triton.cdiv(row_blocks, splits) * RED_BLOCK_T  # whole tiles per split
    return triton.cdiv(T, rows_per_split), rows_per_split


def lora_backward(dy2d, x2d, weight, lora_A, lora_B, xa, scaling, dropout_p, seed, needs_dx, needs_dA, needs_dB):
    """Grads of y = x @ W^T + b + s * ((x*m) @ A^T) @ B^T.  Returns (dx, dA, dB), None where not needed.

    x2d is only read for dA and xa (fp32, from lora_forward) only for dB; lora_A/lora_B None -> dx = dy @ W."""
    has_lora = lora_A is not None
    check_triton_device(dy2d, x2d, weight, lora_A, lora_B, xa, kernel=_lora_dx_kernel)
    T, N = dy2d.shape
    K = weight.shape[1]
    R = lora_A.shape[0] if has_lora else 0
    dev = dy2d.device
    needs_dA = bool(needs_dA and has_lora)
    needs_dB = bool(needs_dB and has_lora)
    f32 = f32_dot(dy2d)
    interp = use_interpreter_path(dy2d)
    BR = block_r(R) if has_lora else 16
    has_dropout = has_lora and dropout_p > 0.0
    drop_scale = 1.0 / (1.0 - dropout_p)
    dx = torch.empty((T, K), dtype=dy2d.dtype, device=dev) if needs_dx else None
    dA = torch.zeros((R, K), dtype=lora_A.dtype, device=dev) if needs_dA else None
    dB = torch.zeros((N, R), dtype=lora_B.dtype, device=dev) if needs_dB else None
    if T == 0 or N == 0 or K == 0:
        if dx is not None:
            dx.zero_()
        return dx, dA, dB
    launch = skinny_launch(dy2d, BR)

    dyb = None
    if has_lora and (needs_dx or needs_dA):
        dyb = torch.empty((T, R), dtype=torch.float32, device=dev)
        bm = shrink_block_m(T, dev)
        _dyb_kernel[(triton.cdiv(T, bm),)](
            dy2d, lora_B, dyb, T, N, R,
            dy2d.stride(0), dy2d.stride(1), lora_B.stride(0), lora_B.stride(1),
            F32_DOT=f32, BLOCK_M=bm, BLOCK_N=64, BLOCK_R=BR, **launch,
        )

    if needs_dx:
        args = (
            dy2d, weight, dyb if has_lora else dx, lora_A if has_lora else dx, dx,
            T, K, N, R,
            dy2d.stride(0), dy2d.stride(1), weight.stride(0), weight.stride(1),
            lora_A.stride(0) if has_lora else 0, lora_A.stride(1) if has_lora else 0,
            dx.stride(0), dx.stride(1),
            float(scaling), float(dropout_p), drop_scale, int(seed),
        )
        flags = dict(HAS_LORA=has_lora, HAS_BIAS=False, ROWSQ=False, HAS_DROPOUT=has_dropout, F32_DOT=f32,
                     BLOCK_R=gemm_block_r(R, f32))
        if interp:
            grid = (triton.cdiv(T, INTERP_GEMM["BLOCK_M"]) * triton.cdiv(K, INTERP_GEMM["BLOCK_N"]),)
            _lora_dx_kernel[grid](*args, **flags, **INTERP_GEMM)
        else:
            grid = lambda META: (triton.cdiv(T, META["BLOCK_M"]) * triton.cdiv(K, META["BLOCK_N"]),)  # noqa: E731
            _lora_dx_kernel_tuned[grid](*args, **flags)

    if needs_dA:
        if x2d is None:
            raise ValueError("x2d is required for dA")
        n_kb = triton.cdiv(K, RED_BLOCK_C)
        splits, rows_per_split = _split_t(T, n_kb, dev)
        part = torch.empty((splits, R, K), dtype=torch.float32, device=dev)
        _lora_dA_kernel[(n_kb, splits)](
            dyb, x2d, part, T, K, R,
            x2d.stride(0), x2d.stride(1), rows_per_split,
            float(scaling), float(dropout_p), drop_scale, int(seed),
            HAS_DROPOUT=has_dropout, F32_DOT=f32_dot(x2d),
            # FMA-based fp32 dots + Philox state: a shorter T tile keeps them out of local memory.
            BLOCK_M=RED_BLOCK_T // 2 if (f32_dot(x2d) and not interp) else RED_BLOCK_T,
            BLOCK_K=RED_BLOCK_C, BLOCK_R=BR, **launch,
        )
        dA.copy_(part.sum(dim=0) if splits > 1 else part[0])

    if needs_dB:
        if xa is None:
            raise ValueError("xa (from lora_forward) is required for dB")
        n_nb = triton.cdiv(N, RED_BLOCK_C)
        splits, rows_per_split = _split_t(T, n_nb, dev)
        part = torch.empty((splits, N, R), dtype=torch.float32, device=dev)
        _lora_dB_kernel[(n_nb, splits)](
            dy2d, xa, part, T, N, R,
            dy2d.stride(0), dy2d.stride(1), rows_per_split,
            float(scaling),
            F32_DOT=f32, BLOCK_M=RED_BLOCK_T, BLOCK_N=RED_BLOCK_C, BLOCK_R=BR, **launch,
        )
        dB.copy_(part.sum(dim=0) if splits > 1 else part[0])

    return dx, dA, dB


def lora_backward_reference(dy2d, x2d, weight, lora_A, lora_B, scaling, mask=None):
    """Textbook float64 gradients (dx, dA, dB); `mask` is the explicit dropout keep mask (None = none)."""
    dy = dy2d.double()
    dx = dy @ weight.double()
    if lora_A is None:
        return dx, None, None
    x = x2d.double()
    xm = x * mask.double() if mask is not None else x
    dyb = dy @ lora_B.double()
    lora_dx = scaling * (dyb @ lora_A.double())
    dx = dx + (lora_dx * mask.double() if mask is not None else lora_dx)
    dA = scaling * dyb.t() @ xm
    dB = scaling * dy.t() @ (xm @ lora_A.double().t())
    return dx, dA, dB
