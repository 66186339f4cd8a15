"""End to end against PEFT: the same model, selection, rank, batch and AdamW; interleaved in one process.

    pytest benchmarks/test_bench_vs_peft.py --benchmark-only

Ours is `apply_act_lora`; PEFT's is ``LoraConfig(target_modules=<the same linears>,
layers_to_transform=<the same blocks>)``. Measured: all blocks, the method's 50 % selection, and the bottom
and top block alone (the backward-depth analysis), each with both. Targets (issue 5; CPU, MiniLM, batch 16,
sequence 128, r = 8, all linear modules): all blocks ≥ 1.25x faster than PEFT with no more memory, and
Act-LoRA at 50 % ≥ 1.6x faster than PEFT on all blocks. The test asserts what must hold whatever the
machine (same trainable parameters, no more memory than PEFT) and reports the speed ratios in
``extra_info``; ``ACT_LORA_BENCH_ASSERT_TARGETS=1`` also asserts the speed targets.
On a GPU the same comparison runs for a larger, randomly initialised BERT-large-sized model.
"""
import os

import pytest
import torch

from act_lora_fast._io import write_json
from act_lora_fast.measure.harness import BenchSettings, resolve_device, synthetic_batch
from act_lora_fast.measure.vs_peft import compare_with_peft, format_peft_table
from act_lora_fast.model.hf import load_classifier

TARGET_ALL, TARGET_HALF = 1.25, 1.6
MEMORY_TOLERANCE = 1.001  # "no more memory": bookkeeping-sized differences only


def _run(benchmark, bench_env, model, tokenizer, *, label, batch_size, seq_len):
    options = bench_env["peft"]
    device = resolve_device(bench_env["device"])
    batch = synthetic_batch(model, batch_size, seq_len, device=device)
    settings = BenchSettings(r=8, alpha=16, target_modules="all-linear", steps=options["steps"], warmup_steps=1,
                             clock=bench_env["clock"])
    num_blocks = model.config.num_hidden_layers
    benchmark.group = f"vs peft {label} {batch_size}x{seq_len}"
    result = benchmark.pedantic(
        compare_with_peft, args=(model, batch, settings),
        kwargs={"tokenizer": tokenizer, "rounds": options["rounds"], "progress": False, "device": device,
                "extra_selections": [[0], [num_blocks - 1]]},
        rounds=1, iterations=1)
    print("\n" + format_peft_table(result))
    benchmark.extra_info.update({"ratios": result["ratios"], "depth_ratios": result["depth_ratios"],
                                 "part_layers": result["part_layers"]})
    if bench_env["out"]:
        write_json(os.path.join(bench_env["out"], f"vs_peft_{label}.json"), result)

    for impl_rows in zip(*[[r for r in result["rows"] if r["implementation"] == impl]
                           for impl in ("act_lora", "peft")]):
        ours, peft = impl_rows
        assert ours["layers"] == peft["layers"]
        assert ours["trainable_parameters"] == peft["trainable_parameters"], ours["layers"]
    ratios = result["ratios"]
    assert ratios["memory_all"] <= MEMORY_TOLERANCE, f"ours uses {ratios['memory_all']:.4f}x PEFT's memory"
    assert ratios["memory_part"] <= MEMORY_TOLERANCE
    if os.environ.get("ACT_LORA_BENCH_ASSERT_TARGETS") == "1":
        assert ratios["speedup_all"] >= TARGET_ALL, f"all blocks: {ratios['speedup_all']:.2f}x < {TARGET_ALL}x"
        assert ratios["speedup_part_vs_peft_all"] >= TARGET_HALF, (
            f"50%: {ratios['speedup_part_vs_peft_all']:.2f}x < {TARGET_HALF}x")
    return result


def test_vs_peft(benchmark, bench_env):
    model, tokenizer = load_classifier(bench_env["model"], require_tokenizer=False)
    options = bench_env["peft"]
    _run(benchmark, bench_env, model, tokenizer, label=os.path.basename(bench_env["model"].rstrip("/")),
         batch_size=options["batch_size"], seq_len=options["seq_len"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the larger-model run needs a GPU")
def test_vs_peft_large_gpu(benchmark, bench_env):
    from compare_peft import bert_large_random

    _run(benchmark, bench_env, bert_large_random(), None, label="bert-large-random", batch_size=32, seq_len=256)
