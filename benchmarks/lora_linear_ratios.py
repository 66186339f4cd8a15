"""Ratio table for one LoRA linear, forward + backward: ours (per backend) / frozen floor, PEFT / floor, PEFT / ours.

The contenders run interleaved, round after round, in one process, so drifts in clock or load hit all of
them alike; each ratio is the median over rounds of per-round ratios. Beside each measured ratio the H200
roofline's prediction (`benchmarks/roofline.py`) is printed. ``--json`` is rewritten after every shape, so a
run cut short still leaves the shapes it finished (gpu_check.sh builds the backend table from it).

    python benchmarks/lora_linear_ratios.py                 # CPU, fp32, the torch path
    python benchmarks/lora_linear_ratios.py --device cuda --dtype bfloat16   # triton + torch vs cuBLAS vs PEFT
    python benchmarks/lora_linear_ratios.py --dropout 0.1   # LoRA dropout on ours and PEFT (modules in train mode)
    python benchmarks/lora_linear_ratios.py --shapes 8192,4096,4096,16 --backends triton --json ratios.json
"""
import argparse
import json
import statistics
import sys
import time

import torch

from lora_linear_cases import GPU_SHAPES, SHAPES, make_floor, make_ours, make_peft
from roofline import parse_shape, predict


def timed(fn, device, inner):
    on_cuda = str(device).startswith("cuda")
    if on_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(inner):
        fn()
    if on_cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / inner


def measure(shape, device, dtype, rounds, inner, backends, dropout=0.0, norms=True):
    """Median ms per contender and median per-round ratios; contenders that fail to run are reported, not fatal."""
    builders = {"floor": lambda: make_floor(*shape, device=device, dtype=dtype)}
    for backend in backends:
        builders[f"ours[{backend}]"] = lambda b=backend: make_ours(*shape, device=device, dtype=dtype, backend=b,
                                                                   dropout=dropout)
    if norms:
        builders[f"ours[{backends[0]}]+norms"] = lambda: make_ours(*shape, device=device, dtype=dtype,
                                                                   backend=backends[0], track_norms=True,
                                                                   dropout=dropout)
    builders["peft"] = lambda: make_peft(*shape, device=device, dtype=dtype, dropout=dropout)
    contenders, errors = {}, {}
    for name, build in builders.items():
        try:
            fn = build()
            for _ in range(2):  # warm-up: allocator, autotuning, JIT
                fn()
            contenders[name] = fn
        except Exception as err:  # one broken backend must not hide the others' numbers
            errors[name] = f"{type(err).__name__}: {str(err)[:200]}"
    times = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            times[name].append(timed(fn, device, inner))
    result = {"ms": {name: 1e3 * statistics.median(t) for name, t in times.items()}, "errors": errors, "ratios": {}}
    for name in contenders:
        if name != "floor" and "floor" in contenders:
            result["ratios"][f"{name}/floor"] = statistics.median(a / b for a, b in zip(times[name], times["floor"]))
        if name.startswith("ours[") and not name.endswith("+norms") and "peft" in contenders:
            result["ratios"][f"peft/{name}"] = statistics.median(a / b for a, b in zip(times["peft"], times[name]))
    return result


def roofline_ratios(shape, dtype, dropout):
    """Predicted ratios keyed like the measured ones (None when the dtype has no H200 peak in the model)."""
    try:
        ratios = predict(*shape, str(dtype)[6:], dropout=dropout)["ratios"]
    except ValueError:
        return {}
    out = {"peft/floor": ratios["peft/floor"]}
    for backend in ("triton", "torch"):
        out[f"ours[{backend}]/floor"] = ratios[f"{backend}/floor"]
        out[f"peft/ours[{backend}]"] = ratios[f"peft/{backend}"]
    # the planned designs, for context (not measured here)
    out["planned triton_fused_dy/floor"] = ratios["triton_fused_dy/floor"]
    out["planned hybrid/floor"] = ratios["hybrid/floor"]
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="float32 / float16 / bfloat16 (default: fp32 CPU, bf16 GPU)")
    parser.add_argument("--shapes", default=None, help="T,IN,OUT,R;T,IN,OUT,R;... (default: the device's set)")
    parser.add_argument("--backends", default=None,
                        help="comma-separated backends of ours (default: triton,torch on CUDA, torch on CPU)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (median taken)")
    parser.add_argument("--inner", type=int, default=None, help="calls per contender per round")
    parser.add_argument("--dropout", type=float, default=0.0, help="LoRA dropout of ours and PEFT (default 0)")
    parser.add_argument("--no-norms", action="store_true", help="skip the norm-tracking contender")
    parser.add_argument("--budget-s", type=float, default=None, help="start no new shape after this many seconds")
    parser.add_argument("--json", default=None, help="write the measurements here (rewritten after every shape)")
    args = parser.parse_args(argv)
    start = time.monotonic()
    on_cuda = args.device.startswith("cuda")
    dtype = getattr(torch, args.dtype or ("bfloat16" if on_cuda else "float32"))
    shapes = [parse_shape(s) for s in args.shapes.split(";")] if args.shapes else (GPU_SHAPES if on_cuda else SHAPES)
    backends = args.backends.split(",") if args.backends else (["triton", "torch"] if on_cuda else ["torch"])
    inner = args.inner or (20 if on_cuda else 1)
    device_name = torch.cuda.get_device_name() if on_cuda else "cpu"
    print(f"device={args.device} ({device_name}) dtype={dtype} rounds={args.rounds} inner={inner} "
          f"dropout={args.dropout} backends={backends} torch={torch.__version__}; 'pred' = H200 roofline "
          "(benchmarks/roofline.py, achievable peaks, ideal Triton GEMMs)", flush=True)
    record = {"format": "act_lora_fast.lora_linear_ratios/1", "device": device_name, "dtype": str(dtype)[6:],
              "dropout": args.dropout, "rounds": args.rounds, "inner": inner, "torch": torch.__version__,
              "shapes": []}
    failures = 0
    headline = []
    for shape in shapes:
        if args.budget_s is not None and time.monotonic() - start > args.budget_s:
            print(f"skipped {shape}: budget of {args.budget_s:.0f} s spent", flush=True)
            headline.append(f"{','.join(map(str, shape))} skipped")
            failures += 1
            continue
        m = measure(shape, args.device, dtype, args.rounds, inner, backends, args.dropout, not args.no_norms)
        pred = roofline_ratios(shape, dtype, args.dropout)
        print(f"T={shape[0]} in={shape[1]} out={shape[2]} r={shape[3]}: "
              + ", ".join(f"{name} {ms:.3f} ms" for name, ms in m["ms"].items()), flush=True)
        for key, value in m["ratios"].items():
            beside = f"   (pred {pred[key]:.3f})" if key in pred else ""
            print(f"    {key:<28} {value:>7.3f}{beside}", flush=True)
        planned = {k: v for k, v in pred.items() if k.startswith("planned ")}
        if planned:
            print("    roofline of the planned designs: " + ", ".join(f"{k[8:]} {v:.3f}" for k, v in planned.items()),
                  flush=True)
        for name, err in m["errors"].items():
            failures += 1
            print(f"    {name} FAILED: {err}", flush=True)
        record["shapes"].append({"shape": list(shape), **m, "predicted": pred})
        if args.json:
            with open(args.json, "w", encoding="utf-8") as handle:
                json.dump(record, handle, indent=2)
        best = [k for k in m["ratios"] if k.endswith("/floor") and k.startswith("ours[") and "+norms" not in k]
        headline.append(f"{','.join(map(str, shape))} " + " ".join(
            f"{k.split('/')[0]}/floor={m['ratios'][k]:.3f}" for k in best)
            + (f" peft/floor={m['ratios']['peft/floor']:.3f}" if "peft/floor" in m["ratios"] else ""))
    print(f"SUMMARY headline {'PASS' if not failures else 'PARTIAL'} {str(dtype)[6:]}: " + "; ".join(headline)
          + f" ({time.monotonic() - start:.0f} s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
