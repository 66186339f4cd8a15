"""One training step end to end under bf16 autocast: ours (per backend) vs PEFT vs the adapter-free floor.

Random-weight models built from transformers configs (no hub): a BERT-large classifier and a Llama-style
decoder of about 1B parameters (4 blocks of Llama-2-7B width: hidden 4096, MLP 11008, 32 heads; 32k vocab).
Base weights in bf16 and frozen; LoRA r = 16 on every linear of every block; the task head trained in full;
AdamW. Ours takes the base dtype for its adapters. PEFT runs twice: ``peft`` with its defaults (adapters
upcast to fp32 by ``autocast_adapter_dtype``, so each LoRA layer also casts x to fp32), ``peft[bf16]`` with
its adapters cast to bf16 like ours. The floor: no adapters, backward forced through every block
(`act_lora_fast.measure.harness.build_variant`). Contenders are interleaved round by round, each on a fresh copy of
the model (`act_lora_fast.measure.harness.measure_training_steps`, wall clock with CUDA syncs, median over rounds).
Prints ``SUMMARY e2e ...``; ``--budget-s`` skips what would start after the budget is spent.

    python benchmarks/gpu_e2e.py                                   # both models, triton + torch backends
    python benchmarks/gpu_e2e.py --models llama-1b-random --rounds 3 --json e2e.json
    python benchmarks/gpu_e2e.py --device cpu --smoke --backends torch   # tiny configs: the script itself
"""
import argparse
import dataclasses
import json
import sys
import time

import torch

from act_lora_fast.measure.harness import FLOOR, BenchSettings, Variant, build_variant, measure_training_steps, synthetic_batch

MODELS = ("bert-large-random", "llama-1b-random")
BATCH = {"bert-large-random": (32, 256), "llama-1b-random": (4, 2048)}
SMOKE_BATCH = (2, 16)


def build_model(name, smoke=False, seed=0, device="cpu"):
    """A randomly initialised sequence classifier, built in bf16 directly on `device` (random init of 1B
    parameters takes seconds on a CPU, milliseconds on the GPU); each contender trains a copy of it."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            return _random_model(name, smoke, seed)
    finally:
        torch.set_default_dtype(previous)


def _random_model(name, smoke, seed):
    from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(seed)
    if name == "bert-large-random":
        size = (dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                     vocab_size=2000) if smoke else
                dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096))
        model = BertForSequenceClassification(BertConfig(num_labels=2, **size))
    elif name == "llama-1b-random":
        size = (dict(hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=4, vocab_size=2000) if smoke else
                dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=4, num_attention_heads=32,
                     num_key_value_heads=32, vocab_size=32000))
        model = LlamaForSequenceClassification(LlamaConfig(num_labels=2, pad_token_id=0,
                                                           max_position_embeddings=4096, **size))
    else:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    return model


def contenders(backends):
    """(label, implementation, backend) of every measured configuration."""
    return ([(f"ours[{b}]", "act_lora", b) for b in backends]
            + [("peft", "peft", "auto"), ("peft[bf16]", "peft", "bf16"), ("floor", FLOOR, "auto")])


def build(base, blocks, implementation, backend, settings, device):
    if implementation == "peft":
        model = build_variant(base, Variant(blocks, "peft"), settings, device)
        if backend == "bf16":  # PEFT's adapters in the base dtype, as ours: no fp32 copy of x per layer
            for name, param in model.named_parameters():
                if "lora_" in name:
                    param.data = param.data.to(torch.bfloat16)
        return model
    return build_variant(base, Variant(blocks, implementation), dataclasses.replace(settings, backend=backend), device)


def run_model(name, device, backends, rounds, r, smoke):
    base = build_model(name, smoke, device=device)
    batch_size, seq_len = SMOKE_BATCH if smoke else BATCH[name]
    batch = synthetic_batch(base, batch_size, seq_len, device=device)
    blocks = tuple(range(base.config.num_hidden_layers))
    settings = BenchSettings(r=r, alpha=2 * r, target_modules="all-linear", steps=1, warmup_steps=1, clock="wall")
    runs, errors = {label: [] for label, _, _ in contenders(backends)}, {}
    for round_index in range(rounds):
        order = contenders(backends) if round_index % 2 == 0 else contenders(backends)[::-1]
        for label, implementation, backend in order:
            if label in errors:
                continue
            try:
                torch.manual_seed(round_index)
                model = build(base, blocks, implementation, backend, settings, device)
                with torch.autocast(device.type, dtype=torch.bfloat16):
                    runs[label].append(measure_training_steps(model, batch, settings, device))
                del model
            except Exception as err:  # one failing contender must not hide the others
                errors[label] = f"{type(err).__name__}: {str(err)[:300]}"
            if device.type == "cuda":
                torch.cuda.empty_cache()
    rows = {}
    for label, summaries in runs.items():
        if summaries:
            step = sorted(s["step_ms"] for s in summaries)[len(summaries) // 2]
            rows[label] = {"step_ms": step, "step_ms_rounds": [s["step_ms"] for s in summaries],
                           "forward_ms": sorted(s["forward_ms"] for s in summaries)[len(summaries) // 2],
                           "backward_ms": sorted(s["backward_ms"] for s in summaries)[len(summaries) // 2],
                           "memory_mib": max(s["memory_bytes"] for s in summaries) / 2**20,
                           "trainable_parameters": summaries[0]["trainable_parameters"]}
    params = sum(p.numel() for p in base.parameters())
    return {"model": name, "parameters": params, "batch": [batch_size, seq_len], "r": r, "rows": rows,
            "errors": errors}


def format_result(result):
    rows, lines = result["rows"], []
    lines.append(f"{result['model']} ({result['parameters'] / 1e6:.1f}M params), batch {result['batch'][0]} x "
                 f"{result['batch'][1]}, r={result['r']}, bf16 autocast:")
    floor, peft = rows.get("floor", {}).get("step_ms"), rows.get("peft", {}).get("step_ms")
    for label, row in rows.items():
        extra = []
        if floor and label != "floor":
            extra.append(f"/floor {row['step_ms'] / floor:.3f}")
        if peft and label.startswith("ours"):
            extra.append(f"peft/this {peft / row['step_ms']:.3f}")
        if rows.get("peft[bf16]") and label.startswith("ours"):
            extra.append(f"peft[bf16]/this {rows['peft[bf16]']['step_ms'] / row['step_ms']:.3f}")
        lines.append(f"  {label:<13} step {row['step_ms']:8.1f} ms (fwd {row['forward_ms']:.1f}, bwd "
                     f"{row['backward_ms']:.1f}) mem {row['memory_mib']:8.0f} MiB  " + "  ".join(extra))
    for label, err in result["errors"].items():
        lines.append(f"  {label} FAILED: {err}")
    return "\n".join(lines)


def summary_part(result):
    rows = result["rows"]
    if "peft" not in rows:
        return f"{result['model']} no PEFT number"
    parts = [f"peft/floor={rows['peft']['step_ms'] / rows['floor']['step_ms']:.3f}"] if "floor" in rows else []
    for peft_label in ("peft", "peft[bf16]"):
        if peft_label in rows:
            parts += [f"{peft_label}/{label}={rows[peft_label]['step_ms'] / row['step_ms']:.3f}"
                      for label, row in rows.items() if label.startswith("ours")]
    parts += [f"{label} FAILED" for label in result["errors"]]
    return f"{result['model']} " + " ".join(parts)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--backends", default="triton,torch")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--r", type=int, default=16)
    parser.add_argument("--smoke", action="store_true", help="tiny model configs (seconds on a CPU)")
    parser.add_argument("--budget-s", type=float, default=None, help="start no new model after this many seconds")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    start = time.monotonic()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("SUMMARY e2e FAILED: no CUDA device")
        return 1
    results, parts, failed = [], [], False
    for name in args.models.split(","):
        if args.budget_s is not None and time.monotonic() - start > args.budget_s:
            parts.append(f"{name} skipped (budget)")
            failed = True
            continue
        try:
            result = run_model(name, device, args.backends.split(","), args.rounds, args.r, args.smoke)
        except Exception as err:
            parts.append(f"{name} FAILED {type(err).__name__}: {str(err)[:200]}")
            failed = True
            continue
        print(format_result(result), flush=True)
        results.append(result)
        parts.append(summary_part(result))
        failed |= bool(result["errors"])
        if args.json:
            with open(args.json, "w", encoding="utf-8") as handle:
                json.dump(results, handle, indent=2)
    print(f"SUMMARY e2e {'FAIL' if failed else 'PASS'}: " + "; ".join(parts) + f" ({time.monotonic() - start:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
