"""Ratio table for one LoRA linear, forward + backward: ours / frozen floor, PEFT / floor, norm-tracking cost.

The contenders run interleaved, round after round, in one process, so drifts in clock or load hit all of
them alike; each ratio is the median over rounds of per-round ratios.

    python benchmarks/lora_linear_ratios.py                 # CPU, fp32, the torch path
    python benchmarks/lora_linear_ratios.py --device cuda --dtype bfloat16   # Triton vs cuBLAS vs PEFT
    python benchmarks/lora_linear_ratios.py --dropout 0.1   # LoRA dropout on ours and PEFT (modules in train mode)
"""
import argparse
import statistics
import time

import torch

from lora_linear_cases import GPU_SHAPES, SHAPES, make_floor, make_ours, make_peft


def timed(fn, device):
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(shape, device, dtype, rounds, inner, dropout=0.0):
    contenders = {
        "floor": make_floor(*shape, device=device, dtype=dtype),
        "ours": make_ours(*shape, device=device, dtype=dtype, dropout=dropout),
        "ours+norms": make_ours(*shape, device=device, dtype=dtype, track_norms=True, dropout=dropout),
        "peft": make_peft(*shape, device=device, dtype=dtype, dropout=dropout),
    }
    for fn in contenders.values():  # warm-up: allocator, autotuning, JIT
        for _ in range(2):
            fn()
    times = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            times[name].append(sum(timed(fn, device) for _ in range(inner)) / inner)
    ratio = lambda a, b: statistics.median(x / y for x, y in zip(times[a], times[b]))  # noqa: E731
    return {
        "floor_ms": 1e3 * statistics.median(times["floor"]),
        "ours_ms": 1e3 * statistics.median(times["ours"]),
        "ours/floor": ratio("ours", "floor"),
        "peft/floor": ratio("peft", "floor"),
        "peft/ours": ratio("peft", "ours"),
        "norms_extra": ratio("ours+norms", "ours") - 1.0,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="float32 / float16 / bfloat16 (default: fp32 CPU, bf16 GPU)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (median taken)")
    parser.add_argument("--inner", type=int, default=None, help="calls per contender per round")
    parser.add_argument("--dropout", type=float, default=0.0, help="LoRA dropout of ours and PEFT (default 0)")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype or ("bfloat16" if args.device == "cuda" else "float32"))
    shapes = GPU_SHAPES if args.device == "cuda" else SHAPES
    inner = args.inner or (20 if args.device == "cuda" else 1)
    print(f"device={args.device} dtype={dtype} rounds={args.rounds} inner={inner} dropout={args.dropout} "
          f"torch={torch.__version__}")
    print(f"{'T':>6} {'in':>5} {'out':>5} {'r':>3} | {'floor ms':>9} {'ours ms':>8} | "
          f"{'ours/floor':>10} {'peft/floor':>10} {'peft/ours':>9} | {'norms extra':>11}")
    for shape in shapes:
        m = measure(shape, args.device, dtype, args.rounds, inner, args.dropout)
        print(f"{shape[0]:>6} {shape[1]:>5} {shape[2]:>5} {shape[3]:>3} | {m['floor_ms']:>9.2f} {m['ours_ms']:>8.2f} | "
              f"{m['ours/floor']:>10.3f} {m['peft/floor']:>10.3f} {m['peft/ours']:>9.3f} | {m['norms_extra']:>+10.1%}",
              flush=True)


if __name__ == "__main__":
    main()
