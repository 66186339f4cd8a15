"""The timing phase of a comparison: every selection's step time and memory, measured apart from training.

Training runs are timed one after another on whatever the machine was doing then; on a shared machine one
variant can draw a quiet minute and the next a busy one (a run once measured all-layer LoRA at 3,936 ms a
step and Act-LoRA at 409 ms). So `compare` trains for scores only and times the selections here: each
selection on a fresh copy of the model, a warm-up step first, the selections interleaved (round-robin, the
order reversed every other round) for a few rounds on one fixed batch, and the median over rounds kept
(`measure.harness.measure_variants`). ``clock="process"`` counts the process's CPU seconds (all its threads),
which other processes on a shared CPU do not inflate; ``"wall"`` is wall-clock time (use it on a GPU).
"""
import dataclasses
import random

from .._checks import check_choice, check_int, check_layers
from ..model.anatomy import find_blocks
from .accounting import CLOCKS
from .harness import BenchSettings, Variant, check_batch, measure_variants


@dataclasses.dataclass
class TimingSettings:
    """How the timing phase measures: ``rounds`` interleaved rounds of ``warmup_steps`` + ``steps`` steps."""
    rounds: int = 3
    steps: int = 2
    warmup_steps: int = 1
    clock: str = "process"

    def __post_init__(self):
        check_int("rounds", self.rounds, 1)
        check_int("steps", self.steps, 1)
        check_int("warmup_steps", self.warmup_steps, 0)
        check_choice("clock", self.clock, CLOCKS)


def timing_batch(dataset, batch_size, *, seed=0):
    """A training batch of `batch_size` examples drawn (seeded) from a `TokenizedDataset`, collated as in training."""
    check_int("batch_size", batch_size, 1)
    if len(dataset) == 0:
        raise ValueError("the dataset is empty: no batch to time")
    picked = random.Random(seed).sample(range(len(dataset)), min(batch_size, len(dataset)))
    return dataset.collate([dataset[i] for i in picked])


def bench_settings(timing, *, r=8, alpha=16, target_modules=None, modules_to_save=None, lr=1e-4, backend="auto"):
    """The `BenchSettings` the harness needs, from `timing` and the training run's adapter options."""
    if not isinstance(timing, TimingSettings):
        raise TypeError(f"timing must be a TimingSettings, got {type(timing).__name__}")
    return BenchSettings(r=r, alpha=alpha, target_modules=target_modules,
                         modules_to_save=list(modules_to_save) if modules_to_save else None,
                         steps=timing.steps, warmup_steps=timing.warmup_steps, lr=lr, backend=backend,
                         clock=timing.clock)


def time_selections(model, selections, batch, settings, *, rounds=3, device=None, progress=False):
    """Step time and memory of each selection (a list of block-index lists), measured interleaved.

    Returns ``{tuple(layers): {"step_ms", "forward_ms", "backward_ms", "optimizer_ms", "peak_memory_bytes",
    "step_ms_rounds", "clock", "rounds"}}``: medians over `rounds` (memory: the maximum). Identical
    selections are measured once. `settings` is a `BenchSettings` (see `bench_settings`).
    """
    if not isinstance(settings, BenchSettings):
        raise TypeError(f"settings must be a BenchSettings, got {type(settings).__name__}")
    check_batch(batch)
    num_blocks = len(find_blocks(model))
    if isinstance(selections, (str, bytes, dict)) or not hasattr(selections, "__iter__"):
        raise TypeError(f"selections must be a list of block-index lists, got {type(selections).__name__}")
    keys = list(dict.fromkeys(tuple(check_layers(s, num_blocks)) for s in selections))
    if not keys:
        raise ValueError("no selections to time")
    measured = measure_variants(model, [Variant(k) for k in keys], batch, settings, rounds=rounds, device=device,
                                progress=progress)
    out = {}
    for variant, result in measured.items():
        out[variant.layers] = {key: result[key] for key in ("step_ms", "forward_ms", "backward_ms", "optimizer_ms")}
        out[variant.layers].update(peak_memory_bytes=result["memory_bytes"], step_ms_rounds=result["step_ms_rounds"],
                                   trainable_parameters=result["trainable_parameters"], clock=settings.clock,
                                   rounds=result["rounds"])
    return out
