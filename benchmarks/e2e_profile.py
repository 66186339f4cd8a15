"""Where ours loses to the adapter-free floor end to end on a CPU: ratios, then a per-op profile.

MiniLM-L6 (bundled), batch 16 × 128, r = 8, every linear of the blocks (q, k, v and the three ``dense``),
AdamW, one thread, CPU time of the process. Two selections: all six blocks and the activation-selected half.
For each, "ours" (`apply_act_lora`) and the floor at the same backward depth (same frozen model, no LoRA,
backward forced down to the lowest selected block; `act_lora_fast.scaling.build_variant`'s ``floor``)
are measured interleaved (ratios = medians over rounds). Then one step of ours and of the floor on all six
blocks runs under ``torch.profiler`` and the per-op self CPU time of both is printed side by side, largest
difference first: the overhead's breakdown.

    python benchmarks/e2e_profile.py                        # ratios (5 rounds) + profile
    python benchmarks/e2e_profile.py --rounds 3 --json out.json --profile-steps 2
"""
import argparse
import collections
import json
import sys
import time

import torch

from act_lora_fast.scaling import (FLOOR, BenchSettings, Variant, activation_ranking, build_variant,
                                   load_base_model, measure_variants, synthetic_batch)


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


def op_profile(model, batch, settings, layers, implementation, steps):
    """{op name: (self CPU µs per step, calls per step)} over `steps` training steps after one warm-up."""
    net = build_variant(model, Variant(tuple(layers), implementation), settings)
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.lr)

    def step():
        net(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    ops = collections.defaultdict(lambda: [0.0, 0])
    for event in prof.key_averages():
        ops[event.key][0] += event.self_cpu_time_total / steps
        ops[event.key][1] += event.count / steps
    return dict(ops)


def format_profile(ours, floor, top):
    names = sorted(set(ours) | set(floor), key=lambda n: -abs(ours.get(n, (0, 0))[0] - floor.get(n, (0, 0))[0]))
    total_o, total_f = sum(v[0] for v in ours.values()), sum(v[0] for v in floor.values())
    lines = [f"self CPU per step: ours {total_o / 1e3:.1f} ms, floor {total_f / 1e3:.1f} ms, "
             f"difference {(total_o - total_f) / 1e3:+.1f} ms",
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
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=1, help="measured steps per round")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--profile-steps", type=int, default=2, help="0: skip the per-op profile")
    parser.add_argument("--top", type=int, default=25, help="rows of the per-op table")
    parser.add_argument("--part", default=None, help="comma-separated blocks of the half (default: activation "
                                                     "ranking's top half)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.time()
    model, tokenizer = load_base_model(args.model)
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
    rows = ratios(model, batch, settings, selections, args.rounds)
    for row in rows:
        print(f"blocks {row['layers']}: ours {row['ours_step_ms']:.0f} ms (fwd {row['ours_forward_ms']:.0f}, bwd "
              f"{row['ours_backward_ms']:.0f}, opt {row['ours_optimizer_ms']:.0f}), floor {row['floor_step_ms']:.0f} ms "
              f"(fwd {row['floor_forward_ms']:.0f}, bwd {row['floor_backward_ms']:.0f}, opt "
              f"{row['floor_optimizer_ms']:.0f}); ours/floor {row['ours_over_floor']:.3f} (per round "
              + ", ".join(f"{r:.3f}" for r in row["ours_over_floor_per_round"]) + ")", flush=True)
    result = {"model": args.model, "batch": [args.batch_size, args.seq_len], "r": args.r, "threads": args.threads,
              "rounds": args.rounds, "rows": rows}
    if args.profile_steps:
        ours = op_profile(model, batch, settings, selections[0], "act_lora", args.profile_steps)
        floor = op_profile(model, batch, settings, selections[0], FLOOR, args.profile_steps)
        print(f"\nper-op profile, all {blocks} blocks, {args.profile_steps} step(s) each (torch.profiler):")
        print(format_profile(ours, floor, args.top))
        result["profile_us_per_step"] = {"ours": ours, "floor": floor}
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)
    print(f"({time.time() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
