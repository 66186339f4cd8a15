"""Triton kernels on a real GPU: forward and gradients against float64, every dtype, odd shapes, ranks 1–128.

Prints one line per case and a summary; exits non-zero if any case is out of tolerance.
Used by benchmarks/gpu_check.sh. ``TRITON_INTERPRET=1 python benchmarks/gpu_kernel_check.py --device cpu --quick``
runs a few of the cases in Triton's interpreter, to check this script itself without a GPU.
"""
import argparse
import itertools
import sys

import torch

from act_lora_fast.functional import dropout_mask, lora_linear
from act_lora_fast.kernels.reference import lora_linear_reference, row_sq_norms_reference

REL_TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 3e-2}
SHAPES = [(256, 512, 512), (615, 123, 123), (4096, 1024, 1024), (1000, 4096, 1536)]
RANKS = [1, 4, 8, 16, 64, 128]


def rel_err(actual, expected):
    return ((actual.double() - expected).abs().max() / expected.abs().max().clamp_min(1e-30)).item()


def check(shape, r, dtype, bias, dropout_p=0.0, device="cuda"):
    T, k_in, n_out = shape
    gen = torch.Generator(device=device).manual_seed(T + r)
    randn = lambda *s: torch.randn(*s, device=device, generator=gen)  # noqa: E731
    x64, w64, a64, b64 = randn(T, k_in).double(), randn(n_out, k_in).double() / k_in**0.5, \
        randn(r, k_in).double() / k_in**0.5, randn(n_out, r).double() / r**0.5
    bias64 = randn(n_out).double() if bias else None
    dy64 = randn(T, n_out).double()
    cast = lambda t: None if t is None else t.to(dtype)  # noqa: E731

    seed = 1000 + r
    x, a, b = (cast(t).requires_grad_() for t in (x64, a64, b64))
    y, rowsq = lora_linear(x, cast(w64), cast(bias64), a, b, 2.0, dropout_p=dropout_p, seed=seed,
                           backend="triton", compute_rowsq=True)
    y.backward(cast(dy64))
    keep = (dropout_mask((T, k_in), dropout_p, seed, x.device, torch.float64, backend="triton")
            if dropout_p > 0 else None)  # the mask the kernels regenerate in forward and in backward
    xr, ar, br = (t.clone().requires_grad_() for t in (x64, a64, b64))
    yr = lora_linear_reference(xr, w64, bias64, ar, br, 2.0, keep)
    yr.backward(dy64)
    errors = {"y": rel_err(y, yr), "rowsq": rel_err(rowsq, row_sq_norms_reference(x.detach())),
              "dx": rel_err(x.grad, xr.grad), "dA": rel_err(a.grad, ar.grad), "dB": rel_err(b.grad, br.grad)}
    return max(errors.values()), errors


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="two small shapes, ranks 1 and 8")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_kernel_check needs a CUDA device (or --device cpu with TRITON_INTERPRET=1)")
    shapes, ranks = (SHAPES[:2], [1, 8]) if args.quick else (SHAPES, RANKS)
    failures, worst = [], {}
    for shape, r, dtype, bias in itertools.product(shapes, ranks, REL_TOL, (True, False)):
        if shape[0] * shape[1] * r > 4096 * 4096 * 128:
            continue
        err, errors = check(shape, r, dtype, bias, device=args.device)
        worst[dtype] = max(worst.get(dtype, 0.0), err)
        ok = err < REL_TOL[dtype]
        if not ok:
            failures.append((shape, r, dtype, bias, errors))
        print(f"{'ok  ' if ok else 'FAIL'} T,in,out={shape} r={r:<3} {str(dtype)[6:]:<8} bias={bias!s:<5} "
              + " ".join(f"{k}={v:.1e}" for k, v in errors.items()), flush=True)
    for shape, r, dtype in itertools.product(SHAPES[:2], ranks[-1:] if args.quick else (8, 64), REL_TOL):
        err, errors = check(shape, r, dtype, True, dropout_p=0.1, device=args.device)  # LoRA dropout
        worst[dtype] = max(worst[dtype], err)
        ok = err < REL_TOL[dtype]
        if not ok:
            failures.append((shape, r, dtype, "dropout", errors))
        print(f"{'ok  ' if ok else 'FAIL'} T,in,out={shape} r={r:<3} {str(dtype)[6:]:<8} dropout=0.1 "
              + " ".join(f"{k}={v:.1e}" for k, v in errors.items()), flush=True)
    print("SUMMARY kernel correctness: " + ", ".join(
        f"{str(d)[6:]} worst rel err {worst[d]:.1e} (bound {REL_TOL[d]:.0e})" for d in worst)
        + f"; {len(failures)} failing case(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
