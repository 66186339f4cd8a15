"""Settings for the end-to-end benchmarks (scaling suite, PEFT comparison), read from the environment.

    ACT_LORA_BENCH_MODEL      model folder or 'minilm' (default: the bundled MiniLM)
    ACT_LORA_BENCH_DEVICE     auto (CUDA when present) | cpu | cuda
    ACT_LORA_BENCH_CLOCK      wall | process (default: process on CPU, wall on CUDA). CPU seconds of this
                              process are what a step costs, whatever else the machine runs; wall-clock time
                              on a shared 2-core machine swings 2-3x between rounds.
    ACT_LORA_BENCH_THREADS    torch intra-op threads (default: 1 with the process clock, torch's choice else)
    ACT_LORA_BENCH_OUT        folder to also write the results' JSON (and plots) to
    ACT_LORA_SCALING_BATCH / _SEQ / _ROUNDS / _STEPS     scaling suite (default 8 / 64 / 2 / 2)
    ACT_LORA_PEFT_BATCH / _SEQ / _ROUNDS / _STEPS        PEFT comparison (default 16 / 128 / 3 / 1)
"""
import os

import pytest
import torch


def env_int(name, default):
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} is not an int") from None
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


@pytest.fixture(scope="module")
def bench_env():
    """The settings; torch's thread count is restored afterwards (other benchmarks share the process)."""
    previous_threads = torch.get_num_threads()
    device = os.environ.get("ACT_LORA_BENCH_DEVICE", "auto")
    on_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    clock = os.environ.get("ACT_LORA_BENCH_CLOCK") or ("wall" if on_cuda else "process")
    if clock not in ("wall", "process"):
        raise ValueError(f"ACT_LORA_BENCH_CLOCK must be 'wall' or 'process', got {clock!r}")
    if os.environ.get("ACT_LORA_BENCH_THREADS") or clock == "process":
        # OpenMP threads spin while they wait, which the process clock would count as work
        torch.set_num_threads(env_int("ACT_LORA_BENCH_THREADS", 1))
    yield {
        "clock": clock,
        "model": os.environ.get("ACT_LORA_BENCH_MODEL", "minilm"),
        "device": device,
        "out": os.environ.get("ACT_LORA_BENCH_OUT") or None,
        "scaling": {"batch_size": env_int("ACT_LORA_SCALING_BATCH", 8), "seq_len": env_int("ACT_LORA_SCALING_SEQ", 64),
                    "rounds": env_int("ACT_LORA_SCALING_ROUNDS", 2), "steps": env_int("ACT_LORA_SCALING_STEPS", 2)},
        "peft": {"batch_size": env_int("ACT_LORA_PEFT_BATCH", 16), "seq_len": env_int("ACT_LORA_PEFT_SEQ", 128),
                 "rounds": env_int("ACT_LORA_PEFT_ROUNDS", 3), "steps": env_int("ACT_LORA_PEFT_STEPS", 1)},
    }
    torch.set_num_threads(previous_threads)
