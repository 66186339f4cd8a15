"""Ratio tables: PEFT with and without `patch_peft()`, against our FastActLoRALinear on the same work.

1. One LoRA linear, forward + backward (the kernel benchmark's shapes), LoRA dropout 0 and 0.1:
   floor (frozen nn.Linear), ours (FastActLoRALinear), PEFT, PEFT patched.
2. The MiniLM training step (bundled model, all blocks, all linear modules, AdamW, task head trained):
   ours (`apply_act_lora`), PEFT, PEFT patched.

Every contender runs interleaved, round after round, in one process (the order alternates between rounds);
each ratio is the median over rounds of per-round ratios.

    python benchmarks/peft_patch_ratios.py                         # CPU: process clock, 1 thread
    python benchmarks/peft_patch_ratios.py --part linear --rounds 7
    python benchmarks/peft_patch_ratios.py --device cuda --clock wall   # Triton, bf16 (linear), fp32 (MiniLM)

The process clock counts this process's CPU seconds: on a shared machine that is what a step costs, whatever
else runs; with more than one thread it also counts OpenMP spinning, so it is used with --threads 1.
"""
import argparse
import contextlib
import statistics
import time

import torch

from act_lora_fast.model.peft_layer import FusedLoraLinear, peft_patched
from lora_linear_cases import GPU_SHAPES, SHAPES, make_floor, make_ours, make_peft


def make_peft_patched(*shape, **kwargs):
    with peft_patched():
        return make_peft(*shape, **kwargs)


LINEAR_CONTENDERS = {"floor": make_floor, "ours": make_ours, "peft": make_peft, "peft+patch": make_peft_patched}


def clock_fn(clock, device):
    read = time.process_time if clock == "process" else time.perf_counter

    def timed(fn):
        if device == "cuda":
            torch.cuda.synchronize()
        start = read()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return read() - start
    return timed


def interleaved(contenders, rounds, timed, inner=1):
    """{name: [seconds per call, one per round]}; the order alternates so no contender always runs first."""
    times = {name: [] for name in contenders}
    names = list(contenders)
    for index in range(rounds):
        for name in names if index % 2 == 0 else names[::-1]:
            times[name].append(sum(timed(contenders[name]) for _ in range(inner)) / inner)
    return times


def ratio(times, a, b):
    return statistics.median(x / y for x, y in zip(times[a], times[b]))


def linear_table(device, dtype, rounds, inner, timed):
    print(f"\none LoRA linear, forward + backward, {device} {str(dtype)[6:]}, {rounds} rounds x {inner}")
    print(f"{'T':>5} {'in':>5} {'out':>5} {'r':>3} {'p':>4} | {'peft ms':>8} {'patch ms':>8} {'ours ms':>8} | "
          f"{'peft/patch':>10} {'patch/ours':>10} {'patch/floor':>11} {'ours/floor':>10}")
    for shape in GPU_SHAPES if device == "cuda" else SHAPES:
        for dropout in (0.0, 0.1):
            contenders = {name: make(*shape, device=device, dtype=dtype, **({} if name == "floor" else
                                                                             {"dropout": dropout}))
                          for name, make in LINEAR_CONTENDERS.items()}
            for fn in contenders.values():  # warm-up: allocator, autotuning
                fn(), fn()
            times = interleaved(contenders, rounds, timed, inner)
            ms = {name: 1e3 * statistics.median(t) for name, t in times.items()}
            print(f"{shape[0]:>5} {shape[1]:>5} {shape[2]:>5} {shape[3]:>3} {dropout:>4} | {ms['peft']:>8.2f} "
                  f"{ms['peft+patch']:>8.2f} {ms['ours']:>8.2f} | {ratio(times, 'peft', 'peft+patch'):>10.3f} "
                  f"{ratio(times, 'peft+patch', 'ours'):>10.3f} {ratio(times, 'peft+patch', 'floor'):>11.3f} "
                  f"{ratio(times, 'ours', 'floor'):>10.3f}", flush=True)


def minilm_table(device, rounds, batch_size, seq_len, clock):
    from act_lora_fast.measure.harness import (BenchSettings, Variant, build_variant, measure_training_steps,
                                               synthetic_batch)
    from act_lora_fast.model.hf import load_classifier

    base, _ = load_classifier("minilm", require_tokenizer=False)
    batch = synthetic_batch(base, batch_size, seq_len, device=device)
    settings = BenchSettings(r=8, alpha=16, target_modules="all-linear", steps=1, warmup_steps=1, clock=clock)
    layers = tuple(range(base.config.num_hidden_layers))

    def build(name):
        torch.manual_seed(0)
        with peft_patched() if name == "peft+patch" else contextlib.nullcontext():
            model = build_variant(base, Variant(layers, "act_lora" if name == "ours" else "peft"), settings, device)
        fused = sum(isinstance(m, FusedLoraLinear) for m in model.modules())
        assert (fused > 0) == (name == "peft+patch"), f"{name}: {fused} fused PEFT layers"
        return model

    names = ["ours", "peft", "peft+patch"]
    times = {name: [] for name in names}
    for index in range(rounds):
        for name in names if index % 2 == 0 else names[::-1]:
            model = build(name)  # a fresh copy each round: no contender inherits another's state
            times[name].append(measure_training_steps(model, batch, settings, device)["step_ms"])
            del model
    print(f"\nMiniLM training step (fwd + bwd + AdamW), all {len(layers)} blocks, all linear modules, r = 8, "
          f"batch {batch_size} x {seq_len}, {device}, {rounds} rounds")
    print(f"{'peft ms':>8} {'patch ms':>8} {'ours ms':>8} | {'peft/patch':>10} {'patch/ours':>10}")
    ms = {name: statistics.median(t) for name, t in times.items()}
    print(f"{ms['peft']:>8.1f} {ms['peft+patch']:>8.1f} {ms['ours']:>8.1f} | "
          f"{ratio(times, 'peft', 'peft+patch'):>10.3f} {ratio(times, 'peft+patch', 'ours'):>10.3f}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["all", "linear", "minilm"], default="all")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="linear part: float32 / bfloat16 (default fp32 CPU, bf16 GPU)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--inner", type=int, default=None, help="linear part: calls per contender per round")
    parser.add_argument("--clock", choices=["wall", "process"], default=None,
                        help="default: process on CPU, wall on CUDA")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default 1 with the process clock)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    args = parser.parse_args()
    clock = args.clock or ("wall" if args.device == "cuda" else "process")
    threads = args.threads or (1 if clock == "process" else None)
    if threads:
        torch.set_num_threads(threads)
    dtype = getattr(torch, args.dtype or ("bfloat16" if args.device == "cuda" else "float32"))
    print(f"torch {torch.__version__}, {args.device}, {clock} clock, {torch.get_num_threads()} threads")
    if args.part in ("all", "linear"):
        linear_table(args.device, dtype, args.rounds, args.inner or (20 if args.device == "cuda" else 1),
                     clock_fn(clock, args.device))
    if args.part in ("all", "minilm"):
        minilm_table(torch.device(args.device), args.rounds, args.batch_size, args.seq_len, clock)


if __name__ == "__main__":
    main()
