"""The scaling suite: step time and memory for k = 1..L selected blocks, fits, and the cost model's check.

    pytest benchmarks/test_bench_scaling.py --benchmark-only
    ACT_LORA_BENCH_MODEL=/path/to/hf-model ACT_LORA_SCALING_BATCH=16 pytest benchmarks/test_bench_scaling.py ...

Fails when the adapters' memory is not linear in k (R² < 0.98, any placement), when total memory is not
linear in k for the contiguous placements (top-k, bottom-k), or when the cost model, calibrated on four
selections, is more than 10 % off on memory or on mean step time on the selections it did not see.
"""
import os

from act_lora_fast.measure.harness import BenchSettings
from act_lora_fast.measure.report import format_table, write_scaling
from act_lora_fast.measure.scaling import ScalingConfig, run_scaling

MIN_R2 = 0.98
MAX_COST_ERROR = 0.10


def test_scaling_suite(benchmark, bench_env):
    options = bench_env["scaling"]
    config = ScalingConfig(model=bench_env["model"], batch_size=options["batch_size"], seq_len=options["seq_len"],
                           rounds=options["rounds"], device=bench_env["device"], progress=False,
                           settings=BenchSettings(steps=options["steps"], warmup_steps=1,
                                                  clock=bench_env["clock"]))
    benchmark.group = f"scaling {config.model} {config.batch_size}x{config.seq_len}"
    results = benchmark.pedantic(run_scaling, args=(config,), rounds=1, iterations=1)
    print("\n" + format_table(results))
    if bench_env["out"]:
        write_scaling(results, os.path.join(bench_env["out"], "scaling"))
    validation = results["cost_validation"]
    benchmark.extra_info.update({
        "fits": {name: {key: entry[key] for key in ("time_fit", "memory_fit", "adapter_memory_fit")}
                 for name, entry in results["placements"].items()},
        "analysis": results["analysis"],
        "cost_max_abs_error": validation["max_abs_error"],
        "cost_mean_abs_error": validation["mean_abs_error"],
    })

    problems = []
    for name, entry in results["placements"].items():
        if entry["adapter_memory_fit"]["r2"] < MIN_R2:
            problems.append(f"{name}: adapters' memory not linear in k, R²={entry['adapter_memory_fit']['r2']:.4f}")
        if name in ("top", "bottom") and entry["memory_fit"]["r2"] < MIN_R2:
            problems.append(f"{name}: training memory not linear in k, R²={entry['memory_fit']['r2']:.4f}")
    if validation["max_abs_error"]["memory_bytes"] > MAX_COST_ERROR:
        problems.append(f"cost model memory error {validation['max_abs_error']['memory_bytes']:.1%} > 10%")
    if validation["mean_abs_error"]["step_ms"] > MAX_COST_ERROR:
        problems.append(f"cost model mean step-time error {validation['mean_abs_error']['step_ms']:.1%} > 10%")
    assert not problems, "; ".join(problems)
