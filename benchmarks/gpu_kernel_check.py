"""Correctness on the device: `lora_linear` (every CUDA backend) against float64, fp32/fp16/bf16, ranks 1/16/64.

A small matrix: per dtype, rank and backend four cases - a power-of-two shape with bias, an odd shape without
bias, the odd shape with bias and LoRA dropout 0.1, a 4096-wide input (long reductions) - checking y, Σx² per
token, dx, dA and dB against the float64 formula (`kernels/reference.py`; with dropout, on the keep mask the
backend regenerates). Run it with ``ACT_LORA_TRITON_AUTOTUNE=0`` (gpu_check.sh does) so each Triton kernel
compiles one config.
Prints one line per case and ``SUMMARY correctness ...``; exits non-zero if a case is out of tolerance.
With ``--budget-s`` it stops starting new cases when the budget is spent and says so in the summary.

    ACT_LORA_TRITON_AUTOTUNE=0 python benchmarks/gpu_kernel_check.py
    TRITON_INTERPRET=1 python benchmarks/gpu_kernel_check.py --device cpu --smoke   # the script itself, on CPU
"""
import argparse
import itertools
import sys
import time

import torch

from act_lora_fast.functional import dropout_mask, lora_linear
from act_lora_fast.kernels.reference import lora_linear_reference, row_sq_norms_reference

# Max |err| / max |ref| per output; fp16/bf16 round every stored element (bf16: 8 bits of mantissa).
REL_TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 3e-2}
RANKS = (1, 16, 64)
SHAPES = {"pow2": (1024, 512, 768), "odd": (615, 123, 211), "wide": (2048, 4096, 1536)}
SMOKE_SHAPES = {"pow2": (64, 32, 48), "odd": (37, 23, 29), "wide": (96, 80, 64)}
SMOKE_RANKS = (1, 16)
CASES = (("pow2", True, 0.0), ("odd", False, 0.0), ("odd", True, 0.1), ("wide", False, 0.0))


def rel_err(actual, expected):
    return ((actual.double() - expected).abs().max() / expected.abs().max().clamp_min(1e-30)).item()


def check(shape, r, dtype, bias, dropout_p, backend, device):
    """{output: relative error} of one case against the float64 reference."""
    T, k_in, n_out = shape
    gen = torch.Generator(device=device).manual_seed(T * 1000 + r)
    randn = lambda *s: torch.randn(*s, device=device, generator=gen, dtype=torch.float64)  # noqa: E731
    x64, w64 = randn(T, k_in), randn(n_out, k_in) / k_in**0.5
    a64, b64 = randn(r, k_in) / k_in**0.5, randn(n_out, r) / r**0.5
    bias64 = randn(n_out) if bias else None
    dy64 = randn(T, n_out)
    cast = lambda t: None if t is None else t.to(dtype)  # noqa: E731
    seed = 1000 + r
    x, a, b = (cast(t).requires_grad_() for t in (x64, a64, b64))
    y, rowsq = lora_linear(x, cast(w64), cast(bias64), a, b, 2.0, dropout_p=dropout_p, seed=seed,
                           backend=backend, compute_rowsq=True)
    y.backward(cast(dy64))
    keep = (dropout_mask((T, k_in), dropout_p, seed, x.device, torch.float64, backend=backend)
            if dropout_p > 0 else None)  # the mask the backend regenerates in forward and in backward
    xr, ar, br = (t.clone().requires_grad_() for t in (x64, a64, b64))
    yr = lora_linear_reference(xr, w64, bias64, ar, br, 2.0, keep)
    yr.backward(dy64)
    return {"y": rel_err(y, yr), "rowsq": rel_err(rowsq, row_sq_norms_reference(x64)),
            "dx": rel_err(x.grad, xr.grad), "dA": rel_err(a.grad, ar.grad), "dB": rel_err(b.grad, br.grad)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--backends", default="triton,torch", help="comma-separated lora_linear backends")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, ranks 1 and 16 (interpreter)")
    parser.add_argument("--budget-s", type=float, default=None, help="start no new case after this many seconds")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("SUMMARY correctness FAILED: no CUDA device (use --device cpu with TRITON_INTERPRET=1)")
        return 1
    start = time.monotonic()
    shapes, ranks = (SMOKE_SHAPES, SMOKE_RANKS) if args.smoke else (SHAPES, RANKS)
    backends = [b for b in args.backends.split(",") if b]
    plan = list(itertools.product(REL_TOL, ranks, backends, CASES))
    failures, worst, done, skipped = [], {}, 0, 0
    for dtype, r, backend, (shape_name, bias, p) in plan:
        if args.budget_s is not None and time.monotonic() - start > args.budget_s:
            skipped += 1
            continue
        label = (f"{backend:<6} {str(dtype)[6:]:<8} r={r:<3} T,in,out={shapes[shape_name]} bias={bias!s:<5} "
                 f"dropout={p}")
        try:
            errors = check(shapes[shape_name], r, dtype, bias, p, backend, args.device)
        except Exception as err:  # a crash is a failing case, and the matrix goes on
            failures.append(label)
            print(f"FAIL {label} {type(err).__name__}: {str(err)[:300]}", flush=True)
            done += 1
            continue
        err = max(errors.values())
        key = f"{backend}/{str(dtype)[6:]}"
        worst[key] = max(worst.get(key, 0.0), err)
        ok = err < REL_TOL[dtype]
        if not ok:
            failures.append(label)
        print(f"{'ok  ' if ok else 'FAIL'} {label} " + " ".join(f"{k}={v:.1e}" for k, v in errors.items()),
              flush=True)
        done += 1
    worst_text = ", ".join(f"{k} {v:.1e}" for k, v in worst.items())
    print(f"SUMMARY correctness {'PASS' if not failures and not skipped else 'FAIL'}: {done}/{len(plan)} cases, "
          f"{len(failures)} failing, {skipped} skipped (budget); worst rel err {worst_text}; bounds "
          + ", ".join(f"{str(d)[6:]} {t:.0e}" for d, t in REL_TOL.items())
          + f"; {time.monotonic() - start:.0f} s")
    return 1 if failures or skipped else 0


if __name__ == "__main__":
    sys.exit(main())
