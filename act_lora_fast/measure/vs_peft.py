"""Our Act-LoRA against PEFT's LoRA on the same blocks, and both against the adapter-free floor."""
import math

import torch

from .._checks import check_fraction, check_layers
from ..model.anatomy import find_blocks
from .harness import (FLOOR, IMPLEMENTATIONS, MEMORY_KEYS, TIME_KEYS, Variant, check_batch, check_settings,
                      measure_variants)
from .scaling import activation_ranking


def compare_with_peft(model, batch, settings=None, *, fraction=0.5, ranking=None, tokenizer=None, rounds=3,
                      extra_selections=(), floor=True, device=None, progress=True):
    """Our `apply_act_lora` against PEFT's LoRA on the same blocks, measured interleaved in one process.

    Measured: all blocks and the method's selection of `fraction` of them (the top of the activation
    `ranking`, profiled on the built-in sentences when not given), each with both implementations, plus
    `extra_selections` (e.g. ``[[0], [L - 1]]`` for the backward-depth analysis). Same model copy, rank,
    targets, head, batch and AdamW on both sides. With `floor`, also the all-blocks step without any
    adapter whose backward still runs through every block (it also computes the lowest block's input
    gradient, so it slightly overstates the floor): PEFT / floor bounds what a faster LoRA op can gain.
    Returns ``{"rows", "ratios", ...}``; speed-ups are PEFT time / our time, memory ratios ours / PEFT's.
    """
    settings = check_settings(settings)
    check_batch(batch)
    num_blocks = len(find_blocks(model))
    check_fraction("fraction", fraction)
    if ranking is not None:
        check_layers(ranking, num_blocks)  # a list of block indices
        if sorted(ranking) != list(range(num_blocks)):
            raise ValueError(f"ranking must be a permutation of the blocks 0..{num_blocks - 1}, got {ranking!r}")
        ranking = list(ranking)
    if ranking is None:
        ranking = activation_ranking(model, tokenizer, target_modules=settings.target_modules).ranking()
    everything = tuple(range(num_blocks))
    part = tuple(sorted(ranking[:max(1, math.ceil(fraction * num_blocks - 1e-9))]))
    selections = [everything, part] + [tuple(check_layers(s, num_blocks)) for s in extra_selections]
    variants = [Variant(layers, impl) for layers in dict.fromkeys(selections) for impl in IMPLEMENTATIONS]
    if floor:
        variants.append(Variant(everything, FLOOR))
    measured = measure_variants(model, variants, batch, settings, rounds=rounds, device=device,
                                progress=progress)
    rows = [{"implementation": v.implementation, "layers": list(v.layers),
             **{key: r[key] for key in TIME_KEYS + MEMORY_KEYS + ("tokens_per_s", "trainable_parameters",
                                                                    "step_ms_rounds")}}
            for v, r in measured.items()]
    get = {(v.implementation, v.layers): r for v, r in measured.items()}
    ours_all, peft_all = get[("act_lora", everything)], get[("peft", everything)]
    ours_part, peft_part = get[("act_lora", part)], get[("peft", part)]
    ratios = {
        "speedup_all": peft_all["step_ms"] / ours_all["step_ms"],
        "memory_all": ours_all["memory_bytes"] / peft_all["memory_bytes"],
        "speedup_part_vs_peft_all": peft_all["step_ms"] / ours_part["step_ms"],
        "speedup_part": peft_part["step_ms"] / ours_part["step_ms"],
        "memory_part": ours_part["memory_bytes"] / peft_part["memory_bytes"],
    }
    for phase in TIME_KEYS[:3]:
        ratios[f"speedup_all_{phase[:-3]}"] = peft_all[phase] / max(ours_all[phase], 1e-9)
    if floor:
        floor_all = get[(FLOOR, everything)]
        ratios["peft_over_floor_all"] = peft_all["step_ms"] / floor_all["step_ms"]
        ratios["ours_over_floor_all"] = ours_all["step_ms"] / floor_all["step_ms"]
    depth = {}
    for layers in selections[2:]:
        for impl in IMPLEMENTATIONS:
            depth[f"{impl}:{','.join(map(str, layers))}_over_all"] = (get[(impl, layers)]["step_ms"]
                                                                     / get[(impl, everything)]["step_ms"])
    return {"num_blocks": num_blocks, "fraction": fraction, "part_layers": list(part), "ranking": list(ranking),
            "batch_shape": list(batch["input_ids"].shape), "rounds": rounds, "clock": settings.clock,
            "threads": torch.get_num_threads(),
            "device": str(device or batch["input_ids"].device), "r": settings.r,
            "target_modules": settings.target_modules, "rows": rows, "ratios": ratios, "depth_ratios": depth}


def format_peft_table(result):
    """A Markdown table of the interleaved comparison and its ratios."""
    lines = ["| implementation | blocks | forward ms | backward ms | optimizer ms | step ms | memory MiB | "
             "trainable params |", "|---|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        lines.append(f"| {row['implementation']} | {row['layers']} | {row['forward_ms']:.0f} | "
                     f"{row['backward_ms']:.0f} | {row['optimizer_ms']:.0f} | {row['step_ms']:.0f} | "
                     f"{row['memory_bytes'] / 2**20:.1f} | {row['trainable_parameters']:,} |")
    ratios = result["ratios"]
    lines += ["", f"all blocks: PEFT / ours step time = {ratios['speedup_all']:.2f}x (forward "
                  f"{ratios['speedup_all_forward']:.2f}x, backward {ratios['speedup_all_backward']:.2f}x, "
                  f"optimizer {ratios['speedup_all_optimizer']:.2f}x); memory ours / PEFT = "
                  f"{ratios['memory_all']:.3f}",
              f"Act-LoRA on {result['part_layers']} ({result['fraction']:.0%}) vs PEFT on all blocks: "
              f"{ratios['speedup_part_vs_peft_all']:.2f}x; vs PEFT on the same blocks: "
              f"{ratios['speedup_part']:.2f}x (memory {ratios['memory_part']:.3f})"]
    if "peft_over_floor_all" in ratios:
        lines.append(f"all blocks vs the adapter-free floor (same backward depth): PEFT "
                     f"{ratios['peft_over_floor_all']:.2f}x, ours {ratios['ours_over_floor_all']:.2f}x")
    for name, value in result["depth_ratios"].items():
        lines.append(f"{name}: {value:.2f}")
    return "\n".join(lines)


