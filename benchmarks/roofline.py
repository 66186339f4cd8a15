"""A roofline to plan by: every launch of one LoRA linear's forward + backward, its FLOPs, bytes and time.

    python benchmarks/roofline.py --shape 8192,4096,4096,16 --dtype bf16
    python benchmarks/roofline.py --shape 8192,4096,4096,16 --shape 2048,4096,4096,16 --triton-gemm-eff 0.85
    python benchmarks/roofline.py --shape 512,1024,1024,16 --launch-us 4 --json roofline.json

Contenders (the launches are read from the code, one row per CUDA kernel or cuBLAS call):
- ``floor``: the frozen ``nn.Linear`` (cuBLAS forward addmm + the dx GEMM): what any LoRA must pay.
- ``triton``: our Triton path with a separate dy·B pass (``act_lora_fast/kernels/triton/{forward,backward}.py``
  at ranks > 32): shrink + rowsq, forward GEMM with the expand in its epilogue; dy·B, dx GEMM with s·dyB·A in its
  epilogue, split-T dA and dB partials and their sums.
- ``triton_fused_dy``: dy·B and dB in one pass over dy, partials summed straight into the gradients' dtype: what
  the kernels do at ranks <= 32 since the kernels rewrite (commit b29c46b).
- ``hybrid``: the issue's planned torch path on CUDA: cuBLAS for both big GEMMs, fused Triton kernels for the
  rank-r passes; the expand and dx's LoRA term are rank-r cuBLAS updates (beta = 1: a read + write of y, dx).
- ``torch``: our torch path (``kernels/torch_fused.py``) run on CUDA as it is: cuBLAS GEMMs plus torch ops.
- ``peft``: PEFT's ``lora.Linear`` (base linear, dropout, lora_A, lora_B, ·scaling, +) and its autograd backward.

Model. Each launch takes max(FLOPs / compute peak, bytes / HBM bandwidth) + an optional fixed launch cost.
Bytes are compulsory traffic: every operand read once and every output written once (perfect L2 reuse inside
a GEMM), in the tensor's own dtype (the fp32 rank-r intermediates of the Triton path as fp32). Peaks for the
H200 SXM (https://www.nvidia.com/en-us/data-center/h200/ : 1,979 TFLOPS bf16/fp16 Tensor Core *with
sparsity*, i.e. 989.5 dense; 67 TFLOPS fp32; 4.8 TB/s HBM3e):
- ``achievable`` (default): 80 % of the dense compute peaks (bf16/fp16 ≈ 790 TFLOP/s, as issue 11 uses; what
  cuBLAS reaches on large GEMMs) and 4.3 TB/s (≈ 90 % of HBM, what a streaming kernel reaches). Ratios are what
  this script is for, and at peaks nobody reaches a bandwidth-bound pass would look cheaper next to a GEMM than
  it is.
- ``datasheet``: the datasheet numbers themselves (989.5 dense, 67, 4.8).
``--triton-gemm-eff`` scales the compute throughput of our two big Triton GEMMs relative to cuBLAS (the issue
estimates 0.8–0.9 for pointer-based, non-persistent wgmma GEMMs); 1.0 (default) is the ideal kernel.
Not modelled: Philox/ALU cost of dropout masks, tail effects of partial waves, L2 hits between launches.
"""
import argparse
import dataclasses
import json
import math
import sys

DATASHEET_URL = "https://www.nvidia.com/en-us/data-center/h200/"
# Dense peaks of the H200 SXM from the datasheet (Tensor Core numbers there are quoted with 2:4 sparsity).
DATASHEET = {"bfloat16": 989.5e12, "float16": 989.5e12, "float32": 67e12, "hbm": 4.8e12}
ACHIEVABLE_COMPUTE_FRACTION = 0.8
ACHIEVABLE_HBM = 4.3e12
PEAKS = {
    "datasheet": dict(DATASHEET),
    "achievable": {**{k: v * ACHIEVABLE_COMPUTE_FRACTION for k, v in DATASHEET.items() if k != "hbm"},
                   "hbm": ACHIEVABLE_HBM},
}
H200_SMS = 132
DTYPES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16", "half": "float16",
          "fp32": "float32", "float32": "float32", "float": "float32"}
ELEMENT_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}
FP32 = 4
BACKENDS = ("triton", "triton_fused_dy", "hybrid", "torch")
# Block sizes of the Triton skinny reductions (kernels/triton/backward.py).
RED_BLOCK_T = RED_BLOCK_C = 64


@dataclasses.dataclass
class Launch:
    name: str
    phase: str      # forward | backward
    engine: str     # cublas | triton_gemm | triton | torch (element-wise / reduction kernels)
    flops: float
    bytes: float

    def time_s(self, peaks, dtype, gemm_eff, launch_s):
        compute = peaks[dtype] * (gemm_eff if self.engine == "triton_gemm" else 1.0)
        return max(self.flops / compute, self.bytes / peaks["hbm"]) + launch_s

    def bound(self, peaks, dtype, gemm_eff):
        compute = peaks[dtype] * (gemm_eff if self.engine == "triton_gemm" else 1.0)
        return "compute" if self.flops / compute >= self.bytes / peaks["hbm"] else "memory"


def _cdiv(a, b):
    return -(-a // b)


def split_t(T, n_col_blocks, num_sms=H200_SMS):
    """The number of split-T partials the Triton dA / dB kernels write (kernels/triton/backward.py)."""
    row_blocks = _cdiv(T, RED_BLOCK_T)
    splits = max(1, min(row_blocks, (2 * num_sms) // max(1, n_col_blocks)))
    rows_per_split = _cdiv(row_blocks, splits) * RED_BLOCK_T
    return _cdiv(T, rows_per_split)


def floor_launches(T, K, N, R, e, bias, dropout, rowsq):
    b = N * e if bias else 0
    return [Launch("addmm y = x·Wᵀ + b", "forward", "cublas", 2 * T * N * K, (T * K + N * K + T * N) * e + b),
            Launch("mm dx = dy·W", "backward", "cublas", 2 * T * N * K, (T * N + N * K + T * K) * e)]


def _reduce_partials(name, splits, rows, cols, e):
    """`dX.copy_(part.sum(0) if splits > 1 else part[0])` after a torch.zeros: up to three small launches."""
    out = [Launch(f"zeros {name}", "backward", "torch", 0, rows * cols * e)]
    if splits > 1:
        out.append(Launch(f"sum {name} partials ({splits})", "backward", "torch", splits * rows * cols,
                          (splits + 1) * rows * cols * FP32))
    out.append(Launch(f"copy_ {name} (fp32 -> dtype)", "backward", "torch", 0, rows * cols * (FP32 + e)))
    return out


def triton_launches(T, K, N, R, e, bias, dropout, rowsq, fused_dy=False, num_sms=H200_SMS):
    b = N * e if bias else 0
    fwd = [Launch("shrink xa = drop(x)·Aᵀ" + (" + rowsq" if rowsq else ""), "forward", "triton",
                  2 * T * K * R + (2 * T * K if rowsq else 0),
                  (T * K + R * K) * e + T * R * FP32 + (T * FP32 if rowsq else 0)),
           Launch("GEMM y = x·Wᵀ + b + s·xa·Bᵀ", "forward", "triton_gemm", 2 * T * N * K + 2 * T * N * R,
                  (T * K + N * K + N * R + T * N) * e + T * R * FP32 + b)]
    dx = Launch("GEMM dx = dy·W + s·(dyB·A)∘m", "backward", "triton_gemm", 2 * T * K * N + 2 * T * K * R,
                (T * N + N * K + R * K + T * K) * e + T * R * FP32)
    s_a, s_b = split_t(T, _cdiv(K, RED_BLOCK_C), num_sms), split_t(T, _cdiv(N, RED_BLOCK_C), num_sms)
    dA = Launch(f"dA partials = s·dyBᵀ·drop(x) (split-T {s_a})", "backward", "triton", 2 * T * R * K,
                T * K * e + T * R * FP32 + s_a * R * K * FP32)
    if fused_dy:
        # planned: one read of dy gives dyB (T x r) and dB's split-T partials; partials summed into the dtype
        bwd = [Launch(f"dyB = dy·B and dB partials = dyᵀ·xa in one pass (split-T {s_b})", "backward", "triton",
                      4 * T * N * R, T * N * e + N * R * e + 2 * T * R * FP32 + s_b * N * R * FP32),
               dx, dA,
               Launch("sum dA partials -> dtype", "backward", "torch", s_a * R * K, s_a * R * K * FP32 + R * K * e),
               Launch("sum dB partials -> dtype", "backward", "torch", s_b * N * R, s_b * N * R * FP32 + N * R * e)]
        return fwd + bwd
    bwd = [Launch("dyB = dy·B", "backward", "triton", 2 * T * N * R, (T * N + N * R) * e + T * R * FP32),
           dx, dA, *_reduce_partials("dA", s_a, R, K, e),
           Launch(f"dB partials = s·dyᵀ·xa (split-T {s_b})", "backward", "triton", 2 * T * N * R,
                  T * N * e + T * R * FP32 + s_b * N * R * FP32),
           *_reduce_partials("dB", s_b, N, R, e)]
    return fwd + bwd


def hybrid_launches(T, K, N, R, e, bias, dropout, rowsq, num_sms=H200_SMS):
    """cuBLAS for both big GEMMs, fused Triton kernels for the rank-r passes (the issue's torch path on CUDA):
    the expand and dx's LoRA term become rank-r cuBLAS updates with beta = 1, each a read + write of y / dx."""
    b = N * e if bias else 0
    s_a, s_b = split_t(T, _cdiv(K, RED_BLOCK_C), num_sms), split_t(T, _cdiv(N, RED_BLOCK_C), num_sms)
    return [Launch("shrink xa = s·drop(x)·Aᵀ" + (" + rowsq" if rowsq else "") + " (Triton, dtype out)", "forward",
                   "triton", 2 * T * K * R + (2 * T * K if rowsq else 0),
                   (T * K + R * K + T * R) * e + (T * FP32 if rowsq else 0)),
            Launch("addmm y = x·Wᵀ + b", "forward", "cublas", 2 * T * N * K, (T * K + N * K + T * N) * e + b),
            Launch("addmm_ y += xa·Bᵀ", "forward", "cublas", 2 * T * N * R, (2 * T * N + T * R + N * R) * e),
            Launch(f"dyB = s·dy·B and dB partials in one pass (Triton, split-T {s_b})", "backward", "triton",
                   4 * T * N * R, (T * N + N * R + 2 * T * R) * e + s_b * N * R * FP32),
            Launch("mm dx = dy·W", "backward", "cublas", 2 * T * N * K, (T * N + N * K + T * K) * e),
            Launch("addmm_ dx += dyB·A" + (" (mask in a Triton epilogue)" if dropout else ""), "backward",
                   "cublas", 2 * T * K * R, (2 * T * K + T * R + R * K) * e),
            Launch(f"dA partials = dyBᵀ·drop(x) (Triton, split-T {s_a})", "backward", "triton", 2 * T * R * K,
                   T * K * e + T * R * e + s_a * R * K * FP32),
            Launch("sum dA partials -> dtype", "backward", "torch", s_a * R * K, s_a * R * K * FP32 + R * K * e),
            Launch("sum dB partials -> dtype", "backward", "torch", s_b * N * R, s_b * N * R * FP32 + N * R * e)]


def _torch_mask_launches(T, K, e, phase):
    """`kernels/torch_fused.py::dropout_keep_mask`: an int32 counter hash, all in place, one launch per op."""
    n, i32 = T * K, 4
    rw = lambda name, r, w: Launch(f"mask: {name}", phase, "torch", n, n * (r + w))  # noqa: E731
    ops = [rw("arange", 0, i32), rw("mul_", i32, i32), rw("add_", i32, i32)]
    for step in range(3):
        ops += [rw(f"shift {step}", i32, i32), rw(f"xor_ {step}", 2 * i32, i32)]
        if step < 2:
            ops.append(rw(f"mul_ {step}", i32, i32))
    ops += [rw("and_", i32, i32), rw(">= p", i32, 1), rw("copy_ to dtype", 1, e), rw("mul_ 1/(1-p)", e, e)]
    return ops


def merges_on_the_fly(T, K, N, dtype, dropout):
    """kernels/torch_fused.py::merges_on_the_fly."""
    return dtype == "float32" and dropout == 0.0 and T * (K + N) > 2 * K * N


def torch_launches(T, K, N, R, e, bias, dropout, rowsq, dtype):
    b = N * e if bias else 0
    merged = merges_on_the_fly(T, K, N, dtype, dropout)
    fwd = []
    if rowsq:
        fwd.append(Launch("rowsq = ‖x‖² (vector_norm)", "forward", "torch", 2 * T * K, T * K * e + T * FP32))
    if dropout > 0:
        fwd += _torch_mask_launches(T, K, e, "forward")
        fwd.append(Launch("drop(x) = mask·x", "forward", "torch", T * K, 3 * T * K * e))
    # s rides on the GEMMs' alpha (no separate scaling pass)
    fwd += [Launch("mm xa_t = A·drop(x)ᵀ", "forward", "cublas", 2 * T * K * R, (T * K + R * K + R * T) * e)]
    if merged:
        fwd += [Launch("addmm W' = W + s·B·A", "forward", "cublas", 2 * N * K * R, (2 * N * K + N * R + R * K) * e),
                Launch("addmm y = x·W'ᵀ + b", "forward", "cublas", 2 * T * N * K, (T * K + N * K + T * N) * e + b)]
    else:
        fwd += [Launch("addmm y = x·Wᵀ + b", "forward", "cublas", 2 * T * N * K, (T * K + N * K + T * N) * e + b),
                Launch("addmm_ y += xa_tᵀ·Bᵀ", "forward", "cublas", 2 * T * N * R, (2 * T * N + T * R + N * R) * e)]
    bwd = []
    if dropout > 0:
        bwd += _torch_mask_launches(T, K, e, "backward")
    if (merged or T > K) and K <= N:  # stacks_b_beside_w
        bwd.append(Launch("cat [W, B]", "backward", "torch", 0, (N * K + N * R + N * (K + R)) * e))
        if merged:
            bwd.append(Launch("addmm_ W' = W + s·B·A (in the stack)", "backward", "cublas", 2 * N * K * R,
                              (2 * N * K + N * R + R * K) * e))
        bwd.append(Launch("mm [dx, dyB] = dy·[W, B]", "backward", "cublas", 2 * T * N * (K + R),
                          (T * N + N * (K + R) + T * (K + R)) * e))
    else:
        bwd += [Launch("mm dx = dy·W", "backward", "cublas", 2 * T * N * K, (T * N + N * K + T * K) * e),
                Launch("mm dyB = dy·B", "backward", "cublas", 2 * T * N * R, (T * N + N * R + T * R) * e)]
    if not merged:
        if dropout > 0:
            bwd += [Launch("mm dyB·A", "backward", "cublas", 2 * T * K * R, (T * R + R * K + T * K) * e),
                    Launch("addcmul_ dx += (dyB·A)∘mask", "backward", "torch", 2 * T * K, 4 * T * K * e)]
        else:
            bwd.append(Launch("addmm_ dx += dyB·A", "backward", "cublas", 2 * T * K * R,
                              (2 * T * K + T * R + R * K) * e))
    if dropout > 0:
        bwd.append(Launch("mul_ drop(x) = mask·x", "backward", "torch", T * K, 3 * T * K * e))
    bwd += [Launch("mm dA = dyBᵀ·drop(x)", "backward", "cublas", 2 * T * R * K, (T * R + T * K + R * K) * e),
            Launch("mm dB = (xa_t·dy)ᵀ", "backward", "cublas", 2 * T * N * R, (R * T + T * N + N * R) * e)]
    return fwd + bwd


def peft_launches(T, K, N, R, e, bias, dropout, rowsq):
    """PEFT 0.21 `lora.Linear.forward`: result = base(x) + lora_B(lora_A(dropout(x))) * scaling."""
    b = N * e if bias else 0
    fwd = [Launch("addmm y = x·Wᵀ + b", "forward", "cublas", 2 * T * N * K, (T * K + N * K + T * N) * e + b)]
    if dropout > 0:
        fwd.append(Launch("native_dropout x_d (+ bool mask)", "forward", "torch", T * K, T * K * (2 * e + 1)))
    fwd += [Launch("mm lora_A: xa = x_d·Aᵀ", "forward", "cublas", 2 * T * K * R, (T * K + R * K + T * R) * e),
            Launch("mm lora_B: z = xa·Bᵀ", "forward", "cublas", 2 * T * N * R, (T * R + N * R + T * N) * e),
            Launch("mul z·scaling", "forward", "torch", T * N, 2 * T * N * e),
            Launch("add y + z", "forward", "torch", T * N, 3 * T * N * e)]
    bwd = [Launch("mul dz = dy·scaling", "backward", "torch", T * N, 2 * T * N * e),
           Launch("mm dxa = dz·B", "backward", "cublas", 2 * T * N * R, (T * N + N * R + T * R) * e),
           Launch("mm dB = dzᵀ·xa", "backward", "cublas", 2 * T * N * R, (T * N + T * R + N * R) * e),
           Launch("mm dx_d = dxa·A", "backward", "cublas", 2 * T * K * R, (T * R + R * K + T * K) * e),
           Launch("mm dA = dxaᵀ·x_d", "backward", "cublas", 2 * T * R * K, (T * R + T * K + R * K) * e)]
    if dropout > 0:
        bwd.append(Launch("dropout backward (mask·scale)", "backward", "torch", T * K, T * K * (2 * e + 1)))
    bwd += [Launch("mm dx = dy·W", "backward", "cublas", 2 * T * N * K, (T * N + N * K + T * K) * e),
            Launch("add dx + dx_d (autograd accumulation)", "backward", "torch", T * K, 3 * T * K * e)]
    return fwd + bwd


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def _fraction(name, value, low, high, low_open=False):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if value > high or value < low or (low_open and value == low):
        raise ValueError(f"{name} must be in {'(' if low_open else '['}{low}, {high}], got {value}")
    return float(value)


def _needed_efficiency(gemm_us, other_us, budget_us):
    """Triton GEMM efficiency e with gemm_us / e + other_us = budget_us (None when no e <= 1 reaches it)."""
    if budget_us <= other_us:
        return None
    needed = gemm_us / (budget_us - other_us)
    return needed if needed <= 1.0 else None


def predict(T, IN, OUT, R, dtype="bf16", *, bias=True, dropout=0.0, rowsq=False, peaks="achievable",
            triton_gemm_efficiency=1.0, launch_us=0.0, num_sms=H200_SMS, target=1.08):
    """Launch lists, totals and predicted ratios for one LoRA linear (T tokens, IN -> OUT, rank R) on an H200.

    Returns ``{"shape", "dtype", "peaks", "contenders": {name: {"launches": [...], "time_us", "flops",
    "bytes", "launch_count"}}, "ratios": {...}}`` with ratios ``<backend>/floor``, ``peft/floor`` and
    ``peft/<backend>`` for every backend in `BACKENDS`, and ``needed_gemm_efficiency``: for each Triton design,
    the fraction of cuBLAS's throughput its two GEMMs must reach to meet ``<design>/floor <= target`` and to tie
    the cuBLAS ``hybrid`` (None: out of reach even at 1.0). Raises TypeError / ValueError naming a bad argument.
    """
    T, K, N, R = (_positive_int(n, v) for n, v in (("T", T), ("IN", IN), ("OUT", OUT), ("R", R)))
    if not isinstance(dtype, str) or dtype.lower() not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    dtype = DTYPES[dtype.lower()]
    if peaks not in PEAKS:
        raise ValueError(f"peaks must be one of {sorted(PEAKS)}, got {peaks!r}")
    dropout = _fraction("dropout", dropout, 0.0, 1.0)
    if dropout >= 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    gemm_eff = _fraction("triton_gemm_efficiency", triton_gemm_efficiency, 0.0, 1.0, low_open=True)
    launch_us = _fraction("launch_us", launch_us, 0.0, 1e6)
    _positive_int("num_sms", num_sms)
    target = _fraction("target", target, 1.0, 100.0)
    e, table = ELEMENT_BYTES[dtype], PEAKS[peaks]
    common = (T, K, N, R, e, bool(bias), dropout, bool(rowsq))
    lists = {"floor": floor_launches(*common),
             "triton": triton_launches(*common, num_sms=num_sms),
             "triton_fused_dy": triton_launches(*common, fused_dy=True, num_sms=num_sms),
             "hybrid": hybrid_launches(*common, num_sms=num_sms),
             "torch": torch_launches(*common, dtype),
             "peft": peft_launches(*common)}
    contenders = {}
    for name, launches in lists.items():
        rows = [{**dataclasses.asdict(launch),
                 "time_us": 1e6 * launch.time_s(table, dtype, gemm_eff, launch_us * 1e-6),
                 "bound": launch.bound(table, dtype, gemm_eff)} for launch in launches]
        contenders[name] = {"launches": rows, "launch_count": len(rows),
                            "time_us": sum(r["time_us"] for r in rows),
                            "flops": sum(r["flops"] for r in rows), "bytes": sum(r["bytes"] for r in rows)}
    t = {name: c["time_us"] for name, c in contenders.items()}
    ratios = {"peft/floor": t["peft"] / t["floor"]}
    for backend in BACKENDS:
        ratios[f"{backend}/floor"] = t[backend] / t["floor"]
        ratios[f"peft/{backend}"] = t["peft"] / t[backend]
    needed = {}
    for design in ("triton", "triton_fused_dy"):
        rows = contenders[design]["launches"]
        gemm = sum(r["time_us"] - launch_us for r in rows if r["engine"] == "triton_gemm") * gemm_eff
        other = contenders[design]["time_us"] - gemm / gemm_eff
        needed[design] = {f"for {target:g}x floor": _needed_efficiency(gemm, other, target * t["floor"]),
                          "to tie hybrid": _needed_efficiency(gemm, other, t["hybrid"])}
    return {"shape": {"T": T, "IN": K, "OUT": N, "R": R}, "dtype": dtype, "bias": bool(bias), "dropout": dropout,
            "rowsq": bool(rowsq),
            "peaks": {"name": peaks, "compute_flops_per_s": table[dtype], "hbm_bytes_per_s": table["hbm"],
                      "source": DATASHEET_URL, "triton_gemm_efficiency": gemm_eff, "launch_us": launch_us},
            "contenders": contenders, "ratios": ratios, "needed_gemm_efficiency": needed}


def parse_shape(text):
    """'T,IN,OUT,R' -> (T, IN, OUT, R) with a clear error."""
    parts = text.replace("x", ",").split(",")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 4 or min(values) < 1:
        raise ValueError(f"--shape must be four positive ints T,IN,OUT,R (e.g. 8192,4096,4096,16), got {text!r}")
    return values


def format_prediction(pred, contenders=("floor",) + BACKENDS + ("peft",)):
    s, p = pred["shape"], pred["peaks"]
    lines = [f"== T={s['T']} IN={s['IN']} OUT={s['OUT']} R={s['R']} {pred['dtype']} bias={pred['bias']} "
             f"dropout={pred['dropout']} | peaks: {p['name']} {p['compute_flops_per_s'] / 1e12:.1f} TFLOP/s, "
             f"{p['hbm_bytes_per_s'] / 1e12:.2f} TB/s ({p['source']}), Triton GEMM at "
             f"{p['triton_gemm_efficiency']:.2f} of cuBLAS, {p['launch_us']:g} µs per launch"]
    for name in contenders:
        c = pred["contenders"][name]
        lines.append(f"-- {name}: {c['launch_count']} launches, {c['flops'] / 1e9:.1f} GFLOP, "
                     f"{c['bytes'] / 1e6:.1f} MB, {c['time_us']:.1f} µs")
        for r in c["launches"]:
            lines.append(f"   {r['phase'][:3]} {r['engine']:<11} {r['name'][:52]:<52} {r['flops'] / 1e9:>9.2f} GFLOP "
                         f"{r['bytes'] / 1e6:>9.2f} MB {r['time_us']:>9.2f} µs  {r['bound']}")
    ratios = pred["ratios"]
    lines.append("predicted: " + ", ".join(f"{k} {v:.3f}" for k, v in ratios.items()))
    fmt = lambda v: "out of reach" if v is None else f"{v:.3f}"  # noqa: E731
    lines.append("Triton GEMM efficiency (fraction of cuBLAS) needed: " + "; ".join(
        f"{design} " + ", ".join(f"{goal} {fmt(v)}" for goal, v in goals.items())
        for design, goals in pred["needed_gemm_efficiency"].items()))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", action="append", default=None, help="T,IN,OUT,R (repeatable; default "
                                                                        "8192,4096,4096,16)")
    parser.add_argument("--dtype", default="bf16", help="bf16 | fp16 | fp32")
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--no-bias", action="store_true")
    parser.add_argument("--rowsq", action="store_true", help="norm tracking on (ours computes Σx² per token)")
    parser.add_argument("--peaks", default="achievable", choices=sorted(PEAKS))
    parser.add_argument("--triton-gemm-eff", type=float, default=1.0,
                        help="compute throughput of our Triton GEMMs relative to cuBLAS (0 < e <= 1)")
    parser.add_argument("--launch-us", type=float, default=0.0, help="fixed cost per launch (µs)")
    parser.add_argument("--target", type=float, default=1.08, help="ours/floor target for the needed-efficiency line")
    parser.add_argument("--json", default=None, help="also write every prediction here")
    args = parser.parse_args(argv)
    try:
        shapes = [parse_shape(s) for s in (args.shape or ["8192,4096,4096,16"])]
        preds = [predict(*shape, args.dtype, bias=not args.no_bias, dropout=args.dropout, rowsq=args.rowsq,
                         peaks=args.peaks, triton_gemm_efficiency=args.triton_gemm_eff, launch_us=args.launch_us,
                         target=args.target)
                 for shape in shapes]
    except (TypeError, ValueError) as err:
        parser.error(str(err))
    for pred in preds:
        print(format_prediction(pred))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(preds, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
