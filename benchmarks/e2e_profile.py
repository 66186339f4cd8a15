"""Where ours loses to the adapter-free floor end to end on a CPU: ratios, then a per-op profile.

MiniLM-L6 (bundled), batch 16 × 128, r = 8, every linear of the blocks (q, k, v and the three ``dense``),
AdamW, one thread, CPU time of the process. Two selections: all six blocks and the activation-selected half.
For each, "ours" (`apply_act_lora`) and the floor at the same backward depth (same frozen model, no LoRA,
backward forced down to the lowest selected block; `act_lora_fast.measure.harness.build_variant`'s ``floor``)
are measured interleaved (ratios = medians over rounds). Then steps of ours and of the floor on all six
blocks are timed op by op (thread CPU time of every ATen op through a TorchDispatchMode; alternating, one
step at a time, medians) and printed side by side, largest difference first: the overhead's breakdown.

    python benchmarks/e2e_profile.py                        # ratios (5 rounds) + profile
    python benchmarks/e2e_profile.py --rounds 3 --json out.json --profile-steps 3 --part 2,3,4
"""
import argparse
import collections
import contextlib
import inspect
import json
import statistics
import sys
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from act_lora_fast.measure.harness import (FLOOR, BenchSettings, Variant, build_variant, measure_training_steps,
                                          measure_variants, synthetic_batch)
from act_lora_fast.measure.scaling import activation_ranking
from act_lora_fast.model.hf import load_classifier


def ratios(model, batch, settings, selections, rounds):
    variants = [Variant(tuple(layers), impl) for layers in selections for impl in ("act_lora", FLOOR)]
    measured = measure_variants(model, variants, batch, settings, rounds=rounds, progress=False)
    rows = []
    for layers in selections:
        ours, floor = measured[Variant(tuple(layers), "act_lora")], measured[Variant(tuple(layers), FLOOR)]
        per_round = [o / f for o, f in zip(ours["step_ms_rounds"], floor["step_ms_rounds"])]
        rows.append({"layers": list(layers), "ours_step_ms": ours["step_ms"], "floor_step_ms": floor["step_ms"],
                     "ours_forward_ms": ours["forward_ms"], "floor_forward_ms": floor["forward_ms"],
                     "ours_backward_ms": ours["backward_ms"], "floor_backward_ms": floor["backward_ms"],
                     "ours_optimizer_ms": ours["optimizer_ms"], "floor_optimizer_ms": floor["optimizer_ms"],
                     "ours_over_floor": ours["step_ms"] / floor["step_ms"],
                     "ours_over_floor_per_round": per_round})
    return rows


@contextlib.contextmanager
def narrow_input_stacking():
    """What-if for `kernels/torch_fused.py` (not ours to edit): stack [W, B] in backward only when in <= out.

    Stacking returns dx as a strided view (row stride in + r). Fed to an FFN's GELU (the FFN output layer,
    in > out), a strided gradient makes ``gelu_backward`` several times slower; for that layer a separate
    dy·B costs no more than the stacked GEMM's extra columns (dy is narrow there). The patched rule reads
    W's shape from the caller's frame (TorchFusedLoRA.backward), which the real rule would get as an argument.
    """
    from act_lora_fast.kernels import torch_fused

    original = torch_fused.stacks_b_beside_w

    def patched(num_tokens, k_in, merged):
        n_out = inspect.currentframe().f_back.f_locals["weight"].shape[0]
        return original(num_tokens, k_in, merged) and k_in <= n_out

    torch_fused.stacks_b_beside_w = patched
    try:
        yield
    finally:
        torch_fused.stacks_b_beside_w = original


def what_if(model, batch, settings, selections, rounds):
    """floor, ours and ours under `narrow_input_stacking`, interleaved (fresh model per measurement)."""
    configs = [(label, tuple(layers), impl, patch) for layers in selections
               for label, impl, patch in (("floor", FLOOR, contextlib.nullcontext), ("ours", "act_lora",
                                          contextlib.nullcontext), ("ours[narrow-stack]", "act_lora",
                                                                    narrow_input_stacking))]
    steps = collections.defaultdict(list)
    for index in range(rounds):
        for label, layers, impl, patch in (configs if index % 2 == 0 else configs[::-1]):
            torch.manual_seed(index)
            with patch():
                net = build_variant(model, Variant(layers, impl), settings)
                steps[(label, layers)].append(measure_training_steps(net, batch, settings, "cpu")["step_ms"])
    rows = []
    for layers in selections:
        get = lambda label: steps[(label, tuple(layers))]  # noqa: E731
        rows.append({"layers": list(layers), **{f"{label}_step_ms": statistics.median(get(label))
                                                for label in ("floor", "ours", "ours[narrow-stack]")},
                     **{f"{label}/floor": statistics.median(a / b for a, b in zip(get(label), get("floor")))
                        for label in ("ours", "ours[narrow-stack]")}})
    return rows


class OpCPUTime(TorchDispatchMode):
    """Thread CPU time (user + system, so page faults count) of every ATen op, by op name.

    CPU time, unlike the profiler's wall-clock spans, does not grow when other processes preempt this one: on
    a shared 2-core box under load the two differ by 2x. Ops are timed where autograd dispatches them, so an
    op's time includes everything it calls (no double counting); the rest of a step (Python, autograd's
    bookkeeping, dispatch) is reported as "(outside ATen ops)".
    """

    def __init__(self):
        super().__init__()
        self.ns = collections.Counter()
        self.calls = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        start = time.thread_time_ns()
        out = func(*args, **(kwargs or {}))
        name = f"aten::{func.overloadpacket.__name__}"
        self.ns[name] += time.thread_time_ns() - start
        self.calls[name] += 1
        return out


def op_profiles(model, batch, settings, layers, steps):
    """{"ours"|"floor": {op name: (median CPU µs per step, calls per step)}}: the two models are built once
    and timed one step at a time, alternating, so drifts hit both; medians over `steps`."""
    nets, optimizers = {}, {}
    for label, implementation in (("ours", "act_lora"), ("floor", FLOOR)):
        nets[label] = build_variant(model, Variant(tuple(layers), implementation), settings)
        optimizers[label] = torch.optim.AdamW([p for p in nets[label].parameters() if p.requires_grad],
                                              lr=settings.lr)

    def step(label):
        nets[label](**batch).loss.backward()
        optimizers[label].step()
        optimizers[label].zero_grad(set_to_none=True)

    samples = {label: collections.defaultdict(list) for label in nets}
    calls = {label: {} for label in nets}
    for label in nets:
        step(label)  # warm-up
    for index in range(steps):
        for label in (("ours", "floor") if index % 2 == 0 else ("floor", "ours")):
            timer = OpCPUTime()
            start = time.thread_time_ns()
            with timer:
                step(label)
            total = time.thread_time_ns() - start
            timer.ns["(outside ATen ops)"] = total - sum(timer.ns.values())
            timer.ns["(step total)"] = total
            for name in set(samples[label]) | set(timer.ns):
                samples[label][name].append(timer.ns.get(name, 0) / 1e3)
                calls[label][name] = timer.calls.get(name, 0)
    return {label: {name: (statistics.median(values), calls[label].get(name, 0))
                    for name, values in samples[label].items()} for label in nets}


def format_profile(ours, floor, top):
    names = sorted(set(ours) | set(floor), key=lambda n: -abs(ours.get(n, (0, 0))[0] - floor.get(n, (0, 0))[0]))
    total_o, total_f = ours["(step total)"][0], floor["(step total)"][0]
    lines = [f"CPU time per step (median): ours {total_o / 1e3:.1f} ms, floor {total_f / 1e3:.1f} ms, "
             f"difference {(total_o - total_f) / 1e3:+.1f} ms ({total_o / total_f:.3f}x)",
             f"{'op':<44} {'ours ms':>8} {'calls':>6} {'floor ms':>9} {'calls':>6} {'diff ms':>8}"]
    for name in names[:top]:
        (o, oc), (f, fc) = ours.get(name, (0.0, 0)), floor.get(name, (0.0, 0))
        lines.append(f"{name[:44]:<44} {o / 1e3:>8.1f} {oc:>6.0f} {f / 1e3:>9.1f} {fc:>6.0f} {(o - f) / 1e3:>+8.1f}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the ratios (0: skip them)")
    parser.add_argument("--steps", type=int, default=1, help="measured steps per round")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--profile-steps", type=int, default=5, help="profiled steps per model (0: skip)")
    parser.add_argument("--top", type=int, default=25, help="rows of the per-op table")
    parser.add_argument("--part", default=None, help="comma-separated blocks of the half (default: activation "
                                                     "ranking's top half)")
    parser.add_argument("--what-if", type=int, default=0, metavar="ROUNDS",
                        help="also measure ours with narrow-input stacking (see narrow_input_stacking), interleaved")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.time()
    model, tokenizer = load_classifier(args.model, require_tokenizer=False)
    batch = synthetic_batch(model, args.batch_size, args.seq_len)
    settings = BenchSettings(r=args.r, alpha=2 * args.r, target_modules="all-linear", steps=args.steps,
                             warmup_steps=1, clock="process")
    blocks = model.config.num_hidden_layers
    if args.part:
        part = sorted(int(i) for i in args.part.split(","))
    else:
        ranking = activation_ranking(model, tokenizer, target_modules=settings.target_modules).ranking()
        part = sorted(ranking[: (blocks + 1) // 2])
    selections = [list(range(blocks)), part]
    print(f"{args.model}: batch {args.batch_size} x {args.seq_len}, r={args.r}, all linears of the blocks, "
          f"{args.threads} thread(s), CPU time, {args.rounds} rounds x {args.steps} step(s), torch {torch.__version__}")
    rows = ratios(model, batch, settings, selections, args.rounds) if args.rounds else []
    for row in rows:
        phases = {who: f"{row[who + '_step_ms']:.0f} ms (fwd {row[who + '_forward_ms']:.0f}, bwd "
                       f"{row[who + '_backward_ms']:.0f}, opt {row[who + '_optimizer_ms']:.0f})"
                  for who in ("ours", "floor")}
        print(f"blocks {row['layers']}: ours {phases['ours']}, floor {phases['floor']}; ours/floor "
              f"{row['ours_over_floor']:.3f} (per round "
              + ", ".join(f"{r:.3f}" for r in row["ours_over_floor_per_round"]) + ")", flush=True)
    result = {"model": args.model, "batch": [args.batch_size, args.seq_len], "r": args.r, "threads": args.threads,
              "rounds": args.rounds, "rows": rows}
    if args.what_if:
        result["what_if"] = what_if(model, batch, settings, selections, args.what_if)
        for row in result["what_if"]:
            print(f"what-if, blocks {row['layers']}: floor {row['floor_step_ms']:.0f} ms, ours "
                  f"{row['ours_step_ms']:.0f} ms ({row['ours/floor']:.3f}x), ours with narrow-input stacking "
                  f"{row['ours[narrow-stack]_step_ms']:.0f} ms ({row['ours[narrow-stack]/floor']:.3f}x)", flush=True)
    if args.profile_steps:
        profiles = op_profiles(model, batch, settings, selections[0], args.profile_steps)
        ours, floor = profiles["ours"], profiles["floor"]
        print(f"\nper-op CPU time, all {blocks} blocks, median of {args.profile_steps} alternating steps each "
              "(thread CPU time per ATen op, TorchDispatchMode):")
        print(format_profile(ours, floor, args.top))
        result["profile_us_per_step"] = {"ours": ours, "floor": floor}
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)
    print(f"({time.time() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
