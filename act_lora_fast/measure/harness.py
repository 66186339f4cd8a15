"""The measuring harness: a selection trained for a few steps on a fresh model copy, timed and weighed.

Each configuration is built on a fresh deep copy of the base model and trained for warm-up + measured steps
(`StepProfiler` splits each step into forward, backward and optimizer time and records memory).
Configurations are measured interleaved (round-robin, the order alternating per round) so slow drifts of a
shared machine hit every configuration alike; the reported numbers are medians over rounds.
"""
import copy
import dataclasses
import statistics
import warnings

import torch
from tqdm.auto import tqdm

from .._checks import check_choice, check_int, check_positive
from ..model.anatomy import find_blocks, target_linears
from ..model.hf import TASK_HEADS, head_modules
from ..model.inject import apply_act_lora
from .accounting import CLOCKS, StepProfiler, trainable_parameters

IMPLEMENTATIONS = ("act_lora", "peft")
FLOOR = "floor"  # no adapters, but backward runs through the same blocks: what any LoRA must pay
TIME_KEYS = ("forward_ms", "backward_ms", "optimizer_ms", "step_ms")
MEMORY_KEYS = ("memory_bytes", "adapter_bytes", "saved_for_backward_bytes")


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
        check_int("steps", self.steps, 1)
        check_int("warmup_steps", self.warmup_steps, 0)
        check_int("r", self.r, 1)
        check_positive("alpha", self.alpha)
        check_positive("lr", self.lr)
        check_choice("clock", self.clock, CLOCKS)


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


# ---------------------------------------------------------------------------------------------- inputs
def synthetic_batch(model, batch_size, seq_len, *, num_labels=2, seed=0, device=None):
    """A full (unpadded) batch of random token ids with labels: a fixed shape is what cost depends on."""
    check_int("batch_size", batch_size, 1)
    check_int("seq_len", seq_len, 1)
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
    heads = head_modules(model, settings.modules_to_save, heads=TASK_HEADS)
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
    check_int("rounds", rounds, 1)
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


