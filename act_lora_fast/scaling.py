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

Configurations are measured interleaved (round-robin over rounds) so slow drifts of a shared machine hit
every configuration alike; the reported numbers are medians over rounds.
"""
import copy
import dataclasses
import json
import math
import os
import statistics
import time
import warnings

import numpy as np
import torch
from tqdm.auto import tqdm

from .adapters import atomic_write
from .anatomy import find_blocks, target_linears
from .inject import apply_act_lora, check_layers
from .train.accounting import CLOCKS, StepProfiler, trainable_parameters

PLACEMENTS = ("top", "bottom", "ranked")
IMPLEMENTATIONS = ("act_lora", "peft")
FLOOR = "floor"  # no adapters, but backward runs through the same blocks: what any LoRA must pay
HEAD_NAMES = ("classifier", "score", "qa_outputs")
TIME_KEYS = ("forward_ms", "backward_ms", "optimizer_ms", "step_ms")
MEMORY_KEYS = ("memory_bytes", "adapter_bytes", "saved_for_backward_bytes")
RESULTS_FORMAT = "act_lora_fast.scaling/1"
MARKERS = {"top": "o", "bottom": "s", "ranked": "x"}  # distinct so overlapping placements stay visible


# ---------------------------------------------------------------------------------------------- settings
@dataclasses.dataclass
class BenchSettings:
    """How one selection is trained while it is measured (the same for every compared configuration).

    ``modules_to_save="auto"`` trains the task head in full (``classifier``/``score``/``qa_outputs``,
    whichever the model has), as PEFT's ``task_type="SEQ_CLS"`` does; ``None`` or ``[]`` trains LoRA only.
    ``clock="process"`` times CPU seconds instead of wall-clock ones (see `StepProfiler`): stable on a
    shared CPU machine when torch runs one thread.
    """
    r: int = 8
    alpha: float = 16
    target_modules: object = "all-linear"
    modules_to_save: object = "auto"
    steps: int = 2
    warmup_steps: int = 1
    lr: float = 1e-4
    backend: str = "auto"
    clock: str = "wall"

    def __post_init__(self):
        for name in ("steps", "warmup_steps"):
            value, low = getattr(self, name), 1 if name == "steps" else 0
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"r must be an int >= 1, got {self.r!r}")
        if not isinstance(self.lr, (int, float)) or not self.lr > 0:
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if self.clock not in CLOCKS:
            raise ValueError(f"clock must be one of {CLOCKS}, got {self.clock!r}")


def check_settings(settings):
    """`settings` itself, or the default `BenchSettings` for None."""
    if settings is None:
        return BenchSettings()
    if not isinstance(settings, BenchSettings):
        raise TypeError(f"settings must be a BenchSettings, got {type(settings).__name__}")
    return settings


def check_batch(batch):
    """A training batch: a dict with a non-empty (batch, sequence) integer ``input_ids`` tensor and ``labels``."""
    if not isinstance(batch, dict):
        raise TypeError(f"batch must be a dict of tensors with input_ids and labels, got {type(batch).__name__}")
    ids = batch.get("input_ids")
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.numel() == 0 or ids.is_floating_point():
        shown = tuple(ids.shape) if isinstance(ids, torch.Tensor) else type(ids).__name__
        raise ValueError(f"batch['input_ids'] must be a non-empty (batch, sequence) integer tensor, got {shown}")
    if not isinstance(batch.get("labels"), torch.Tensor):
        raise ValueError(f"batch needs a 'labels' tensor (the training step needs a loss); its keys are "
                         f"{sorted(batch)}")
    return batch


@dataclasses.dataclass(frozen=True)
class Variant:
    """One measured configuration: which implementation puts LoRA on which blocks."""
    layers: tuple
    implementation: str = "act_lora"

    @property
    def label(self):
        return f"{self.implementation}:{','.join(map(str, self.layers))}"


def resolve_device(device="auto"):
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device} requested but CUDA is not available")
    return device


def head_modules(model, modules_to_save="auto"):
    """The names of the fully trained modules for `modules_to_save` ("auto": the task head)."""
    if modules_to_save == "auto":
        children = {name for name, _ in model.named_children()}
        return [name for name in HEAD_NAMES if name in children]
    if modules_to_save is None:
        return []
    if isinstance(modules_to_save, str):
        return [modules_to_save]
    return list(modules_to_save)


# ---------------------------------------------------------------------------------------------- inputs
def load_base_model(model="minilm", *, num_labels=2, device="cpu"):
    """A sequence classifier (random head) and its tokenizer (None when the folder has none).

    The base stays on the CPU by default: each measured configuration copies it to the device, so the
    device holds only the model being measured (its memory statistics then describe that model alone).
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from .calibration import resolve_model_path

    path = resolve_model_path(model)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"model folder not found: {model!r} (give a local Hugging Face model folder, "
                                "or 'minilm' for the bundled MiniLM)")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "classifier newly initialised" report is expected here
    try:
        net = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels)
    finally:
        hf_logging.set_verbosity(verbosity)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError):
        tokenizer = None
    if tokenizer is not None and tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    if net.config.pad_token_id is None:
        net.config.pad_token_id = tokenizer.pad_token_id if tokenizer is not None else 0
    return net.to(resolve_device(device)), tokenizer


def synthetic_batch(model, batch_size, seq_len, *, num_labels=2, seed=0, device=None):
    """A full (unpadded) batch of random token ids with labels: a fixed shape is what cost depends on."""
    for name, value in (("batch_size", batch_size), ("seq_len", seq_len)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if not vocab:
        raise ValueError(f"{type(model).__name__} has no config.vocab_size to draw token ids from")
    max_positions = getattr(model.config, "max_position_embeddings", None)
    if max_positions and seq_len > max_positions:
        raise ValueError(f"seq_len={seq_len} exceeds the model's max_position_embeddings={max_positions}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    low = min(1000, vocab // 10)  # skip the special and unused ids at the start of BERT-like vocabularies
    ids = torch.randint(low, vocab, (batch_size, seq_len), generator=generator)
    labels = torch.randint(0, num_labels, (batch_size,), generator=generator)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
            "labels": labels.to(device)}


def activation_ranking(model, tokenizer=None, *, batch_size=8, seq_len=64, target_modules="all-linear",
                       batches=None, progress=False):
    """Blocks by activation-norm importance (the method's ranking) on the built-in calibration sentences."""
    from .calibration import load_examples, make_batches
    from .profiling import profile_activations

    if batches is None:
        if tokenizer is not None:
            batches = make_batches(tokenizer, load_examples(), batch_size=batch_size, max_seq_len=seq_len)
        else:
            batches = [synthetic_batch(model, batch_size, seq_len)]
    return profile_activations(model, batches, target_modules=target_modules, progress=progress)


def placement_layers(placement, k, num_blocks, ranking=None):
    """The blocks a placement selects for k blocks (sorted)."""
    if placement not in PLACEMENTS:
        raise ValueError(f"unknown placement {placement!r}; choose one of {', '.join(PLACEMENTS)}")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= num_blocks:
        raise ValueError(f"k must be an int in 1..{num_blocks}, got {k!r}")
    if placement == "top":
        return list(range(num_blocks - k, num_blocks))
    if placement == "bottom":
        return list(range(k))
    if ranking is None or sorted(ranking) != list(range(num_blocks)):
        raise ValueError(f"placement 'ranked' needs a ranking: a permutation of 0..{num_blocks - 1}, "
                         f"got {ranking!r}")
    return sorted(ranking[:k])


# ---------------------------------------------------------------------------------------------- building
def _peft_target_names(model, target_modules, layers):
    """Block-relative module names, so PEFT's ``layers_to_transform`` picks the blocks as we do."""
    stack = find_blocks(model)
    targets = target_linears(model, target_modules, stack.path)
    names = set()
    for index in layers:
        prefix = f"{stack.path}.{index}."
        names.update(name[len(prefix):] for name in targets[index])
    return sorted(names), stack.layers_pattern


def build_variant(base, variant, settings, device=None):
    """A fresh deep copy of `base` (moved to `device`) with LoRA on `variant.layers`, ready to train.

    ``variant.implementation``: ``act_lora`` (ours), ``peft``, or ``floor`` (no adapters, but backward
    reaches the lowest selected block: the cost any LoRA on those blocks pays).
    """
    model = copy.deepcopy(base)
    if device is not None:
        model.to(device)
    heads = head_modules(model, settings.modules_to_save)
    layers = list(variant.layers)
    if variant.implementation == "act_lora":
        apply_act_lora(model, layers, target_modules=settings.target_modules, r=settings.r,
                       alpha=settings.alpha, modules_to_save=heads or None, backend=settings.backend,
                       verbose=False)
    elif variant.implementation == FLOOR:
        model.requires_grad_(False)
        for name in heads:
            model.get_submodule(name).requires_grad_(True)
        lowest = find_blocks(model).blocks[min(layers)]
        lowest.register_forward_pre_hook(_input_needs_grad, with_kwargs=True)
    elif variant.implementation == "peft":
        from peft import LoraConfig, get_peft_model

        names, pattern = _peft_target_names(model, settings.target_modules, layers)
        config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=0.0, target_modules=names,
                            layers_to_transform=layers, layers_pattern=pattern, modules_to_save=heads or None)
        with warnings.catch_warnings():  # peft calls a transformers API deprecated in v5; not ours to fix
            warnings.simplefilter("ignore", FutureWarning)
            model = get_peft_model(model, config)
    else:
        raise ValueError(f"unknown implementation {variant.implementation!r}; choose one of "
                         f"{', '.join(IMPLEMENTATIONS + (FLOOR,))}")
    model.train()
    return model


def _input_needs_grad(module, args, kwargs):
    """Make the block's hidden-state input a leaf that needs grad, so backward reaches this block."""
    if args:
        return (args[0].detach().requires_grad_(),) + tuple(args[1:]), kwargs
    return args, {**kwargs, "hidden_states": kwargs["hidden_states"].detach().requires_grad_()}


def measure_training_steps(model, batch, settings, device):
    """Train `model` on `batch` for warm-up + measured steps with AdamW; the StepProfiler summary."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters to measure a training step with")
    optimizer = torch.optim.AdamW(params, lr=settings.lr)
    profiler = StepProfiler(model, optimizer, device, warmup_steps=settings.warmup_steps, clock=settings.clock)
    tokens = int(batch["input_ids"].numel())
    for _ in range(settings.warmup_steps + settings.steps):
        with profiler.phase("forward"):
            loss = model(**batch).loss
        with profiler.phase("backward"):
            loss.backward()
        with profiler.phase("optimizer"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        profiler.end_step(tokens)
    summary = profiler.summary()
    memory = summary["memory"]
    trainable_bytes = sum(p.numel() * p.element_size() for p in params)
    summary["memory_bytes"] = memory["peak_backward_bytes"]
    # what training adds per trainable parameter: the weight, its gradient and AdamW's two moments
    summary["adapter_bytes"] = trainable_bytes + memory["grad_bytes"] + memory["optimizer_state_bytes"]
    summary["saved_for_backward_bytes"] = memory["saved_for_backward_bytes"]
    summary["trainable_parameters"] = trainable_parameters(model)
    return summary


def measure_variants(base, variants, batch, settings=None, *, rounds=2, device=None, progress=True):
    """Measure each variant `rounds` times, interleaved; ``{variant: medians over rounds}``.

    Every measurement builds a fresh copy of `base` on `device` (default: the batch's device), so no
    configuration inherits another's state.
    """
    settings = check_settings(settings)
    check_batch(batch)
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be a positive int, got {rounds!r}")
    variants = list(dict.fromkeys(variants))  # identical selections are measured once
    if not variants:
        raise ValueError("no variants to measure")
    device = torch.device(device) if device is not None else batch["input_ids"].device
    runs = {variant: [] for variant in variants}
    bar = tqdm(total=rounds * len(variants), desc="measuring selections", disable=not progress)
    for round_index in range(rounds):
        # alternate the order so neither end of the list always runs on a warmer machine
        order = variants if round_index % 2 == 0 else variants[::-1]
        for variant in order:
            bar.set_postfix_str(variant.label)
            torch.manual_seed(round_index)
            model = build_variant(base, variant, settings, device)
            runs[variant].append(measure_training_steps(model, batch, settings, device))
            del model
            bar.update()
    bar.close()
    return {variant: _median_summary(summaries) for variant, summaries in runs.items()}


def _median_summary(summaries):
    result = {key: statistics.median(s[key] for s in summaries) for key in TIME_KEYS + ("tokens_per_s",)}
    result.update({key: max(s[key] for s in summaries) for key in MEMORY_KEYS})
    result["trainable_parameters"] = summaries[0]["trainable_parameters"]
    result["memory"] = summaries[-1]["memory"]
    result["rounds"] = len(summaries)
    result["step_ms_rounds"] = [s["step_ms"] for s in summaries]
    return result


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
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(self.settings, BenchSettings):
            raise TypeError(f"settings must be a BenchSettings, got {type(self.settings).__name__}")
        if self.ks is not None:
            if isinstance(self.ks, (str, bytes)) or not hasattr(self.ks, "__iter__"):
                raise TypeError(f"ks must be a list of ints (numbers of selected blocks), got {self.ks!r}")
            if not self.ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in self.ks):
                raise ValueError(f"ks must be positive ints, got {self.ks!r}")
            if len(set(self.ks)) < 2:
                raise ValueError(f"ks needs at least two distinct values to fit a line, got {self.ks!r}")


def run_scaling(config=None, *, model=None, tokenizer=None, ranking=None):
    """Measure every (placement, k) and fit time and memory against k; a JSON-ready dict.

    Pass `model` (and `tokenizer`) to measure an already loaded model instead of ``config.model``, and
    `ranking` to use a known activation ranking instead of profiling the built-in calibration sentences.
    """
    from .cost import CostModel, default_calibration

    config = config if config is not None else ScalingConfig()
    if not isinstance(config, ScalingConfig):
        raise TypeError(f"config must be a ScalingConfig, got {type(config).__name__}")
    if model is not None and not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (or None to load config.model), got "
                        f"{type(model).__name__}")
    started = time.perf_counter()
    if model is None:
        model, tokenizer = load_base_model(config.model, num_labels=config.num_labels)
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


# ---------------------------------------------------------------------------------------------- vs PEFT
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
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
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


# ---------------------------------------------------------------------------------------------- output
def readable_by_all(path):
    """Give a temp file the permissions a plain ``open`` would (mkstemp makes it owner-only)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def write_json(path, obj):
    """JSON through a temp file in the same folder and ``os.replace``."""
    with atomic_write(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(obj, handle, indent=2)
            handle.write("\n")
        readable_by_all(tmp)
    return path


def _figure(ncols, width=5.0, height=4.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height), tight_layout=True)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _save(fig, path):
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
        readable_by_all(tmp)
    return path


def plot_scaling(results, out_dir):
    """``scaling_time.png`` (step time split per placement, with the fit) and ``scaling_memory.png``."""
    placements = results["placements"]
    title = f"{os.path.basename(str(results['model']).rstrip('/'))} · batch {results['batch_size']}×" \
            f"{results['seq_len']} · r={results['r']} · {results['device']} · " \
            f"{results.get('clock', 'wall')} clock, {results.get('threads', '?')} thread(s)"
    fig, axes = _figure(len(placements))
    top = max(max(entry["step_ms"]) for entry in placements.values()) * 1.3  # headroom for the legend
    for ax, (name, entry) in zip(axes, placements.items()):
        ks = np.asarray(entry["k"])
        bottom = np.zeros(len(ks))
        for key, color in zip(TIME_KEYS[:3], ("tab:blue", "tab:orange", "tab:green")):
            values = np.asarray(entry[key])
            ax.bar(ks, values, bottom=bottom, color=color, label=key[:-3], width=0.6)
            bottom += values
        fit = entry["time_fit"]
        ax.plot(ks, fit["slope"] * ks + fit["intercept"], "k--",
                label=f"fit {fit['slope']:.0f} ms/k, R²={fit['r2']:.3f}")
        ax.set(title=f"{name}-k", xlabel="selected blocks k", ylabel="step time (ms)", ylim=(0, top))
        ax.set_xticks(ks)
        ax.legend(fontsize=7, loc="upper left", ncol=2)
    fig.suptitle(title, fontsize=10)
    time_path = _save(fig, os.path.join(out_dir, "scaling_time.png"))

    fig, axes = _figure(2)
    for name, entry in placements.items():
        ks = np.asarray(entry["k"])
        for ax, key, fit_key in ((axes[0], "memory_bytes", "memory_fit"),
                                 (axes[1], "adapter_bytes", "adapter_memory_fit")):
            fit = entry[fit_key]
            mib = np.asarray(entry[key]) / 2**20
            line = ax.plot(ks, mib, MARKERS[name], label=f"{name}-k: {fit['slope'] / 2**20:.1f} MiB/k, "
                                               f"R²={fit['r2']:.3f}")[0]
            ax.plot(ks, (fit["slope"] * ks + fit["intercept"]) / 2**20, "--", color=line.get_color())
    source = next(iter(placements.values()))
    axes[0].set(title="training memory (peak)", xlabel="selected blocks k", ylabel="MiB")
    axes[1].set(title="adapters: weights + grads + AdamW state", xlabel="selected blocks k", ylabel="MiB")
    for ax in axes:
        ax.set_xticks(source["k"])
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    memory_path = _save(fig, os.path.join(out_dir, "scaling_memory.png"))
    return [time_path, memory_path]


def write_scaling(results, out_dir):
    """``scaling.json`` and the PNG plots under `out_dir`; returns the written paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = [write_json(os.path.join(out_dir, "scaling.json"), results)]
    return paths + plot_scaling(results, out_dir)


def format_table(results):
    """A Markdown table: per placement and k, the step split, memory, and the fits."""
    lines = ["| placement | k | blocks | forward ms | backward ms | optimizer ms | step ms | memory MiB | "
             "adapters MiB |", "|---|---|---|---|---|---|---|---|---|"]
    for name, entry in results["placements"].items():
        for i, k in enumerate(entry["k"]):
            lines.append(f"| {name} | {k} | {entry['layers'][i]} | {entry['forward_ms'][i]:.0f} | "
                         f"{entry['backward_ms'][i]:.0f} | {entry['optimizer_ms'][i]:.0f} | "
                         f"{entry['step_ms'][i]:.0f} | {entry['memory_bytes'][i] / 2**20:.1f} | "
                         f"{entry['adapter_bytes'][i] / 2**20:.2f} |")
    lines += ["", "| placement | time slope ms/k | time intercept ms | time R² | memory slope MiB/k | "
              "memory R² | adapters R² |", "|---|---|---|---|---|---|---|"]
    for name, entry in results["placements"].items():
        t, m, a = entry["time_fit"], entry["memory_fit"], entry["adapter_memory_fit"]
        lines.append(f"| {name} | {t['slope']:.1f} | {t['intercept']:.1f} | {t['r2']:.3f} | "
                     f"{m['slope'] / 2**20:.2f} | {m['r2']:.4f} | {a['r2']:.4f} |")
    analysis = results.get("analysis")
    if analysis:
        lines += ["", f"bottom block alone / all blocks (step time): {analysis['bottom1_over_all']:.2f}; "
                      f"top block alone / all blocks: {analysis['top1_over_all']:.2f}"]
    validation = results.get("cost_validation")
    if validation:
        lines.append(f"cost model on unseen selections: max |error| step time "
                     f"{validation['max_abs_error']['step_ms']:.1%}, memory "
                     f"{validation['max_abs_error']['memory_bytes']:.1%}")
    return "\n".join(lines)

