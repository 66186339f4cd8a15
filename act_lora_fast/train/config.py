"""What one fine-tuning run is: `TrainConfig` (every option, checked) and `TrainResult` (what it returns)."""
import dataclasses
import json
import os
from typing import Optional

import torch

from .._checks import (check_bool, check_choice, check_fraction, check_int, check_lora_hyperparameters,
                       check_non_negative, check_positive, check_probability)
from ..data.glue import GlueTask, get_task
from ..data.text import TEXT_TASK
from ..functional import check_backend_name
from ..model.targets import check_target_modules

SELECTIONS = ("all", "activation", "gradient", "random", "bottom", "first", "last", "fixed", "none")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
CHECKPOINTING = ("non-reentrant", "reentrant")


@dataclasses.dataclass
class TrainConfig:
    """Everything one run needs. Defaults are tuned for LoRA on small encoders: lr 2e-3 (LoRA wants about
    ten times full fine-tuning's), batch 8, warmup 6 %, classification head trained in full.

    Layer selection: ``selection`` is one of
    ``"all"`` (LoRA in every block), ``"activation"`` (Act-LoRA: the blocks with the largest input activation
    norms), ``"gradient"`` (largest gradient norms), ``"random"``, ``"bottom"`` (smallest activation norms),
    ``"first"`` / ``"last"`` (the lowest / topmost blocks of the stack), ``"fixed"`` (exactly the block
    indices in ``layers``, chosen beforehand, e.g. by `compare`), ``"none"`` (no LoRA at all: only the
    head, ``modules_to_save``, trains; the head-only baseline). How many: ``k`` blocks, a
    ``fraction`` of them, or the fewest covering a ``cumulative`` share of the total score. Left as None it
    is ``"activation"`` when k/fraction/cumulative is given, else ``"all"``.
    """
    model: str
    task: str = "sst2"                          # a GLUE task, or "text": causal-LM fine-tuning on train_file
    data_dir: Optional[str] = None
    output_dir: Optional[str] = None
    train_file: Optional[str] = None            # task "text": .jsonl (text / prompt+completion / messages) or .txt
    eval_file: Optional[str] = None             # task "text": None holds out a seeded eval_fraction of train_file
    eval_fraction: float = 0.1
    # which blocks get LoRA
    selection: Optional[str] = None
    k: Optional[int] = None
    fraction: Optional[float] = None
    cumulative: Optional[float] = None
    layers: Optional[list] = None               # the blocks of selection "fixed"
    calibration_samples: int = 256
    metric: str = "input_norm"                  # the activation score: input_norm, input_rms, block_output, update
    gradient_warmup_steps: int = 0              # selection "gradient": head-only steps before scoring (0: random head)
    # the adapter
    r: int = 8
    alpha: float = 16
    dropout: float = 0.0
    target_modules: Optional[list] = None
    modules_to_save: Optional[list] = None      # None: the classification head (classifier, pooler, ...)
    backend: str = "auto"
    # optimisation
    epochs: int = 3
    batch_size: int = 8                         # per device, as transformers' Trainer
    eval_batch_size: int = 64
    learning_rate: float = 2e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    grad_accum_steps: int = 1
    max_grad_norm: Optional[float] = 1.0
    eval_steps: Optional[int] = None            # also evaluate (and keep the best adapter) every N steps
    loraplus_lr_ratio: Optional[float] = None   # LoRA+: lora_B learns this many times faster (None: plain LoRA)
    group_by_length: bool = False               # batch similar lengths: ~3x less padding, ~1-2 points lower
    precision: str = "auto"                     # auto: bf16 (or fp16) autocast on CUDA, fp32 on CPU
    seed: int = 0
    # data
    max_seq_len: int = 128
    max_train_samples: Optional[int] = None
    max_eval_samples: Optional[int] = None
    # run
    device: str = "auto"
    resume_from: Optional[str] = None           # a saved adapter folder: its layers and weights, trained on
    overwrite: bool = False                     # replace an earlier run's report/adapter/plots in output_dir
    save_adapter: bool = True
    plots: bool = True
    progress: bool = True
    # scale
    fsdp: bool = False                          # under torchrun: FSDP2 (fully_shard per block, then the root)
    reshard_after_forward: bool = True          # FSDP2: free each block's gathered weights after its forward
    gradient_checkpointing: Optional[str] = None  # "non-reentrant" or "reentrant": recompute blocks in backward

    def __post_init__(self):
        for name in ("model", "data_dir", "output_dir", "resume_from", "train_file", "eval_file"):
            if isinstance(getattr(self, name), os.PathLike):
                setattr(self, name, os.fspath(getattr(self, name)))
        if not isinstance(self.model, str) or not self.model:
            raise TypeError(f"model must be a path or hub id (non-empty str), got {self.model!r}")
        self._check_task()
        if self.resume_from is not None:
            chosen = [n for n in ("selection", "k", "fraction", "cumulative", "layers") if getattr(self, n) is not None]
            if chosen:
                raise ValueError(f"resume_from trains the saved adapter's own blocks: leave {', '.join(chosen)} "
                                 "unset")
        if self.selection is None:
            chosen = any(v is not None for v in (self.k, self.fraction, self.cumulative))
            self.selection = "activation" if chosen else "all"
        if self.selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {', '.join(SELECTIONS)}, got {self.selection!r}")
        given = [n for n in ("k", "fraction", "cumulative") if getattr(self, n) is not None]
        if len(given) > 1:
            raise ValueError(f"give at most one of k, fraction, cumulative; got {', '.join(given)}")
        if (self.selection == "fixed") != (self.layers is not None):
            raise ValueError("selection 'fixed' needs layers (a list of block indices), and layers need "
                             f"selection 'fixed'; got selection={self.selection!r}, layers={self.layers!r}")
        if self.selection == "fixed":
            if given:
                raise ValueError(f"selection 'fixed' takes no {given[0]}")
            if isinstance(self.layers, (str, bytes)) or not hasattr(self.layers, "__iter__"):
                raise TypeError(f"layers must be a list of block indices, got {self.layers!r}")
            self.layers = [check_int("layers[]", i, 0) for i in self.layers]
            if not self.layers or len(set(self.layers)) != len(self.layers):
                raise ValueError(f"layers must be distinct block indices, at least one, got {self.layers}")
            self.layers = sorted(self.layers)
        elif self.selection not in ("all", "none") and not given:
            raise ValueError(f"selection {self.selection!r} needs k, fraction or cumulative")
        if self.selection in ("all", "none") and given:
            raise ValueError(f"selection {self.selection!r} takes no {given[0]}")
        check_int("k", self.k, 1, optional=True)
        check_fraction("fraction", self.fraction, optional=True)
        check_fraction("cumulative", self.cumulative, optional=True)
        check_lora_hyperparameters(self.r, self.alpha, self.dropout)
        check_positive("learning_rate", self.learning_rate)
        check_non_negative("weight_decay", self.weight_decay)
        check_probability("warmup_ratio", self.warmup_ratio)
        check_positive("loraplus_lr_ratio", self.loraplus_lr_ratio, optional=True)
        check_positive("max_grad_norm", self.max_grad_norm, optional=True)
        for name in ("group_by_length", "save_adapter", "plots", "progress", "overwrite", "fsdp",
                     "reshard_after_forward"):
            check_bool(name, getattr(self, name))
        if isinstance(self.modules_to_save, str):
            self.modules_to_save = [self.modules_to_save]  # one module name, as apply_act_lora takes it
        if self.modules_to_save is not None and not (
                isinstance(self.modules_to_save, (list, tuple))
                and all(isinstance(n, str) and n for n in self.modules_to_save)):
            raise TypeError(f"modules_to_save must be None or a list of module names, got {self.modules_to_save!r}")
        check_target_modules(self.target_modules)
        check_backend_name(self.backend)
        if self.device != "auto":
            try:
                torch.device(self.device)
            except (RuntimeError, TypeError):
                raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}") from None
        for name, low in (("calibration_samples", 1), ("epochs", 1), ("batch_size", 1), ("eval_batch_size", 1),
                          ("grad_accum_steps", 1), ("max_seq_len", 8), ("seed", 0)):
            check_int(name, getattr(self, name), low)
        for name in ("max_train_samples", "max_eval_samples", "eval_steps"):
            check_int(name, getattr(self, name), 1, optional=True)
        check_choice("precision", self.precision, PRECISIONS)
        check_choice("metric", self.metric, ("input_norm", "input_rms", "block_output", "update"))
        check_int("gradient_warmup_steps", self.gradient_warmup_steps, 0)
        if self.gradient_checkpointing is not None:
            check_choice("gradient_checkpointing", self.gradient_checkpointing, CHECKPOINTING)
        if self.fsdp and self.precision == "fp16":
            raise ValueError("fsdp with precision fp16 is not supported (FSDP2 here has no sharded grad scaler); "
                             "use bf16 or fp32")
        if self.resume_from is not None and not os.path.isdir(self.resume_from):
            raise FileNotFoundError(f"resume_from: adapter folder not found: {self.resume_from}")

    def _check_task(self):
        if self.task != TEXT_TASK:
            if not isinstance(self.task, GlueTask):
                get_task(self.task)
            given = [n for n in ("train_file", "eval_file") if getattr(self, n) is not None]
            if given:
                raise ValueError(f"{given[0]} is for task 'text' (causal LM); task {self.task!r} reads GLUE data")
            return
        if self.train_file is None:
            raise ValueError("task 'text' needs train_file (.jsonl or .txt)")
        for name in ("train_file", "eval_file"):
            path = getattr(self, name)
            if path is not None and not os.path.isfile(path):
                raise FileNotFoundError(f"{name}: file not found: {path}")
        if isinstance(self.eval_fraction, bool) or not isinstance(self.eval_fraction, (int, float)) \
                or not 0.0 < self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in (0, 1), got {self.eval_fraction!r}")

    @property
    def selection_label(self):
        """A short name for tables: "all", "activation@50%", "random@k=3", "resumed" (the saved adapter's
        blocks), ..."""
        if self.resume_from is not None:
            return "resumed"
        if self.selection == "all":
            return "all"
        if self.selection == "none":
            return "head-only"
        if self.selection == "fixed":
            return "fixed:" + ",".join(map(str, self.layers))
        if self.fraction is not None:
            return f"{self.selection}@{self.fraction:.0%}"
        if self.k is not None:
            return f"{self.selection}@k={self.k}"
        return f"{self.selection}@cum={self.cumulative:g}"


# The fields that never change what a run computes: where it writes, what it shows, and the device, kernels and
# parallelism it runs on (the same math, to rounding: FSDP2 and checkpointing too, RESULTS.md §10). Every other
# field, including fields added later, changes results.
NOT_RESULT_FIELDS = ("output_dir", "overwrite", "save_adapter", "plots", "progress", "device", "backend",
                     "eval_batch_size", "fsdp", "reshard_after_forward", "gradient_checkpointing")


def result_options(config, *, leave_out=()):
    """The options of `config` that change a run's result, as JSON values: what a resumable study records,
    and compares before it keeps earlier runs. `leave_out`: fields the study sets per run (seed, blocks)."""
    options = {field.name: getattr(config, field.name) for field in dataclasses.fields(config)
               if field.name not in NOT_RESULT_FIELDS and field.name not in leave_out}
    if isinstance(options.get("task"), GlueTask):
        options["task"] = options["task"].name
    for name in ("model", "data_dir", "resume_from", "train_file", "eval_file"):  # one path, however spelled
        if isinstance(options.get(name), str) and os.path.exists(options[name]):
            options[name] = os.path.realpath(options[name])
    return json.loads(json.dumps(options))


@dataclasses.dataclass
class TrainResult:
    model: torch.nn.Module   # the trained model, best epoch's adapter loaded back when it was saved
    report: dict
    output_dir: Optional[str]
    scores: object = None    # the LayerScores the selection used (None for "all" and resumed runs)
