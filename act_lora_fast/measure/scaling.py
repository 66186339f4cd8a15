"""What a LoRA selection costs: training-step time and memory against the number of selected blocks.

For k = 1 … L selected blocks under three placements,
- ``top``: the k deepest blocks, - ``bottom``: the k shallowest, - ``ranked``: the k best by activation norm,
each selection is trained for a few steps on a fresh copy of the model, and the step is split into forward,
backward and optimizer time (`act_lora_fast.train.accounting.StepProfiler`) with its memory (CUDA peak
allocation, or on CPU the bytes saved for backward plus parameter, gradient and optimizer-state bytes).

Two costs are mixed in "LoRA costs grow with the number of layers": the adapters' own cost (∝ k) and the
backward pass through the frozen blocks, which runs from the top down to the lowest selected block whatever
k is. Top-k placements grow both with k; bottom-k placements pay the full backward depth from k = 1. The
fits (slope, intercept, R²) per placement, the bottom-1 / top-1 vs all-blocks ratios and a calibrated
`act_lora_fast.cost.CostModel` make the split explicit.

Configurations are measured interleaved by `harness`; `report` writes the JSON, tables and plots.
"""
import dataclasses
import time

import numpy as np
import torch

from .._checks import check_block_count, check_choice, check_int
from ..method.calibration import load_examples, make_batches
from ..method.profiling import profile_activations
from ..model.anatomy import find_blocks
from ..model.hf import load_classifier
from .cost import CostModel, default_calibration
from .harness import (MEMORY_KEYS, TIME_KEYS, BenchSettings, Variant, measure_variants,
                      resolve_device, synthetic_batch)

PLACEMENTS = ("top", "bottom", "ranked")
RESULTS_FORMAT = "act_lora_fast.scaling/1"


# ---------------------------------------------------------------------------------------------- selections
def activation_ranking(model, tokenizer=None, *, batch_size=8, seq_len=64, target_modules="all-linear",
                       batches=None, progress=False):
    """Blocks by activation-norm importance (the method's ranking) on the built-in calibration sentences."""
    if batches is None:
        if tokenizer is not None:
            batches = make_batches(tokenizer, load_examples(), batch_size=batch_size, max_seq_len=seq_len)
        else:
            batches = [synthetic_batch(model, batch_size, seq_len)]
    return profile_activations(model, batches, target_modules=target_modules, progress=progress)


def placement_layers(placement, k, num_blocks, ranking=None):
    """The blocks a placement selects for k blocks (sorted)."""
    check_choice("placement", placement, PLACEMENTS)
    check_block_count("k", k, num_blocks)
    if placement == "top":
        return list(range(num_blocks - k, num_blocks))
    if placement == "bottom":
        return list(range(k))
    if ranking is None or sorted(ranking) != list(range(num_blocks)):
        raise ValueError(f"placement 'ranked' needs a ranking: a permutation of 0..{num_blocks - 1}, "
                         f"got {ranking!r}")
    return sorted(ranking[:k])


# ---------------------------------------------------------------------------------------------- fitting
def fit_linear(x, y):
    """Least-squares line y ≈ slope·x + intercept: ``{slope, intercept, r2}`` (scipy's linregress).

    R² is 1 - SS_res / SS_tot; a constant y that the line reproduces exactly has R² = 1.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"x and y must be 1-D and of equal length, got shapes {x.shape} and {y.shape}")
    if len(np.unique(x)) < 2:
        raise ValueError(f"a line needs at least two distinct x values, got {x.tolist()}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("x and y must be finite (NaN or inf found)")
    from scipy import stats  # imported here: scipy.stats is slow to import for the CLI

    fit = stats.linregress(x, y)
    residual = y - (fit.slope * x + fit.intercept)
    ss_res, ss_tot = float(residual @ residual), float(((y - y.mean()) ** 2).sum())
    scale = max(float(np.abs(y).max()), 1e-300)
    if ss_tot <= (1e-12 * scale) ** 2 * len(y):
        r2 = 1.0 if ss_res <= (1e-9 * scale) ** 2 * len(y) else 0.0
    else:
        r2 = 1.0 - ss_res / ss_tot
    return {"slope": float(fit.slope), "intercept": float(fit.intercept), "r2": float(r2)}


# ---------------------------------------------------------------------------------------------- the suite
@dataclasses.dataclass
class ScalingConfig:
    """What `run_scaling` measures. ``ks=None`` means 1 … L; ``device="auto"`` picks CUDA when present."""
    model: str = "minilm"
    batch_size: int = 8
    seq_len: int = 64
    placements: tuple = PLACEMENTS
    ks: tuple = None
    rounds: int = 2
    device: str = "auto"
    seed: int = 0
    num_labels: int = 2
    progress: bool = True
    settings: BenchSettings = dataclasses.field(default_factory=BenchSettings)

    def __post_init__(self):
        unknown = [p for p in self.placements if p not in PLACEMENTS]
        if unknown or not self.placements:
            raise ValueError(f"placements must be a non-empty subset of {PLACEMENTS}, got {self.placements!r}")
        for name in ("batch_size", "seq_len", "rounds", "num_labels"):
            check_int(name, getattr(self, name), 1)
        if not isinstance(self.settings, BenchSettings):
            raise TypeError(f"settings must be a BenchSettings, got {type(self.settings).__name__}")
        if self.ks is not None:
            if isinstance(self.ks, (str, bytes)) or not hasattr(self.ks, "__iter__"):
                raise TypeError(f"ks must be a list of ints (numbers of selected blocks), got {self.ks!r}")
            if not self.ks:
                raise ValueError("ks is empty: give the numbers of selected blocks to measure")
            for k in self.ks:
                check_int("each of ks", k, 1)
            if len(set(self.ks)) < 2:
                raise ValueError(f"ks needs at least two distinct values to fit a line, got {self.ks!r}")


def run_scaling(config=None, *, model=None, tokenizer=None, ranking=None):
    """Measure every (placement, k) and fit time and memory against k; a JSON-ready dict.

    Pass `model` (and `tokenizer`) to measure an already loaded model instead of ``config.model``, and
    `ranking` to use a known activation ranking instead of profiling the built-in calibration sentences.
    """
    config = config if config is not None else ScalingConfig()
    if not isinstance(config, ScalingConfig):
        raise TypeError(f"config must be a ScalingConfig, got {type(config).__name__}")
    if model is not None and not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (or None to load config.model), got "
                        f"{type(model).__name__}")
    started = time.perf_counter()
    if model is None:
        model, tokenizer = load_classifier(config.model, num_labels=config.num_labels, require_tokenizer=False)
        model_name = config.model
    else:
        model_name = getattr(model.config, "_name_or_path", "") or type(model).__name__
    device = resolve_device(config.device)
    num_blocks = len(find_blocks(model))
    ks = list(config.ks) if config.ks is not None else list(range(1, num_blocks + 1))
    if max(ks) > num_blocks:
        raise ValueError(f"ks {ks} exceed the model's {num_blocks} blocks")
    if len(ks) < 2:
        raise ValueError(f"the model has {num_blocks} block(s); a fit against k needs at least two values of k")
    if ranking is None and "ranked" in config.placements:
        ranking = activation_ranking(model, tokenizer, batch_size=config.batch_size, seq_len=config.seq_len,
                                     target_modules=config.settings.target_modules).ranking()
    batch = synthetic_batch(model, config.batch_size, config.seq_len, num_labels=config.num_labels,
                            seed=config.seed, device=device)

    selections = {p: [placement_layers(p, k, num_blocks, ranking) for k in ks] for p in config.placements}
    calibration = default_calibration(num_blocks)
    variants = [Variant(tuple(layers)) for p in config.placements for layers in selections[p]]
    variants += [Variant(tuple(layers)) for layers in calibration]
    measured = measure_variants(model, variants, batch, config.settings, rounds=config.rounds, device=device,
                                progress=config.progress)
    by_layers = {v.layers: result for v, result in measured.items()}

    placements = {}
    for placement in config.placements:
        rows = [by_layers[tuple(layers)] for layers in selections[placement]]
        entry = {"k": ks, "layers": selections[placement]}
        entry.update({key: [row[key] for row in rows] for key in TIME_KEYS + MEMORY_KEYS})
        entry["trainable_parameters"] = [row["trainable_parameters"] for row in rows]
        entry["time_fit"] = fit_linear(ks, entry["step_ms"])
        entry["memory_fit"] = fit_linear(ks, entry["memory_bytes"])
        entry["adapter_memory_fit"] = fit_linear(ks, entry["adapter_bytes"])
        entry["phase_fits"] = {key: fit_linear(ks, entry[key]) for key in TIME_KEYS[:3]}
        placements[placement] = entry

    points = [{"layers": list(layers), **{key: r[key] for key in TIME_KEYS + ("memory_bytes",)}}
              for layers, r in by_layers.items()]
    cost_model = CostModel.from_model(model, target_modules=config.settings.target_modules, r=config.settings.r)
    cost_model.meta.update(_meta(model_name, config, device))
    cost_model.fit([p for p in points if p["layers"] in calibration])
    validation = cost_model.validate([p for p in points if p["layers"] not in calibration])

    everything = tuple(range(num_blocks))
    all_ms = by_layers[everything]["step_ms"]
    analysis = {
        "bottom1_over_all": by_layers[(0,)]["step_ms"] / all_ms,
        "top1_over_all": by_layers[(num_blocks - 1,)]["step_ms"] / all_ms,
        "bottom1_memory_over_all": by_layers[(0,)]["memory_bytes"] / by_layers[everything]["memory_bytes"],
        "top1_memory_over_all": (by_layers[(num_blocks - 1,)]["memory_bytes"]
                                 / by_layers[everything]["memory_bytes"]),
        "adapter_ms_per_block": cost_model.coefficients["step_ms"][1],
        "backward_depth_ms_per_block": cost_model.coefficients["step_ms"][2],
        "base_ms": cost_model.coefficients["step_ms"][0],
        "adapter_bytes_per_block": cost_model.coefficients["memory_bytes"][1],
        "depth_bytes_per_block": cost_model.coefficients["memory_bytes"][2],
    }
    return {
        "format": RESULTS_FORMAT,
        **_meta(model_name, config, device),
        "num_blocks": num_blocks,
        "ranking": list(ranking) if ranking is not None else None,
        "placements": placements,
        "analysis": analysis,
        "cost_model": cost_model.to_dict(),
        "cost_validation": validation,
        "seconds": time.perf_counter() - started,
    }


def _meta(model_name, config, device):
    return {"model": model_name, "device": str(device), "batch_size": config.batch_size, "seq_len": config.seq_len,
            "r": config.settings.r, "target_modules": config.settings.target_modules,
            "steps": config.settings.steps, "warmup_steps": config.settings.warmup_steps,
            "rounds": config.rounds, "clock": config.settings.clock, "torch": torch.__version__,
            "threads": torch.get_num_threads()}


