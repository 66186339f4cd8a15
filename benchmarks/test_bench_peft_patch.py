"""pytest-benchmark: PEFT with and without `patch_peft()`, and our FastActLoRALinear, on the same work.

    pytest benchmarks/test_bench_peft_patch.py --benchmark-only

One LoRA linear forward + backward (the kernel benchmark's shapes, LoRA dropout 0 and 0.1) and the MiniLM
training step (all blocks, all linear modules, r = 8; settings from the environment, see conftest.py).
For ratios measured interleaved in one process, use `python benchmarks/peft_patch_ratios.py`.
"""
import contextlib

import pytest
import torch

pytest.importorskip("peft")
from act_lora_fast.model.peft_layer import FusedLoraLinear, peft_patched  # noqa: E402
from act_lora_fast.measure.harness import (BenchSettings, Variant, build_variant,  # noqa: E402
                                          measure_training_steps, resolve_device, synthetic_batch)
from act_lora_fast.model.hf import load_classifier  # noqa: E402
from lora_linear_cases import GPU_SHAPES, SHAPES, make_ours, make_peft, synchronised  # noqa: E402
from peft_patch_ratios import make_peft_patched  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPE = torch.bfloat16 if DEVICE == "cuda" else torch.float32
LINEAR = {"ours": make_ours, "peft": make_peft, "peft+patch": make_peft_patched}


@pytest.mark.parametrize("contender", list(LINEAR))
@pytest.mark.parametrize("dropout", [0.0, 0.1], ids=["p0", "p0.1"])
@pytest.mark.parametrize("shape", GPU_SHAPES if DEVICE == "cuda" else SHAPES,
                         ids=lambda s: "T{}-in{}-out{}-r{}".format(*s))
def test_peft_patch_lora_linear(benchmark, shape, dropout, contender):
    benchmark.group = "peft patch linear {} {} T{}-in{}-out{}-r{} p{}".format(DEVICE, str(DTYPE)[6:], *shape,
                                                                              dropout)
    step = synchronised(LINEAR[contender](*shape, device=DEVICE, dtype=DTYPE, dropout=dropout))
    rounds = 20 if DEVICE == "cuda" else (3 if shape[1] >= 4096 else 7)
    benchmark.pedantic(step, rounds=rounds, iterations=1, warmup_rounds=2)


@pytest.mark.parametrize("contender", ["ours", "peft", "peft+patch"])
def test_peft_patch_minilm_step(benchmark, bench_env, contender):
    model, _ = load_classifier(bench_env["model"], require_tokenizer=False)
    device = resolve_device(bench_env["device"])
    options = bench_env["peft"]
    batch = synthetic_batch(model, options["batch_size"], options["seq_len"], device=device)
    settings = BenchSettings(r=8, alpha=16, target_modules="all-linear", steps=options["steps"], warmup_steps=1,
                             clock=bench_env["clock"])
    layers = tuple(range(model.config.num_hidden_layers))
    with peft_patched() if contender == "peft+patch" else contextlib.nullcontext():
        variant = build_variant(model, Variant(layers, "act_lora" if contender == "ours" else "peft"), settings,
                                device)
    assert any(isinstance(m, FusedLoraLinear) for m in variant.modules()) == (contender == "peft+patch")
    benchmark.group = f"peft patch minilm step {options['batch_size']}x{options['seq_len']}"
    summary = benchmark.pedantic(measure_training_steps, args=(variant, batch, settings, device), rounds=1,
                                 iterations=1)
    benchmark.extra_info["step_ms"] = summary["step_ms"]
