"""The training loop: (selective) LoRA fine-tuning of a sequence classifier on a GLUE task, with cost accounting.

From Python::

    from act_lora_fast import TrainConfig, finetune     # finetune is this module's `train`
    result = finetune(TrainConfig(model="path/to/model", task="sst2", data_dir="glue", fraction=0.5,
                               epochs=1, output_dir="runs/sst2"))
    print(result.report["score"], result.report["selected_layers"])

One run: profile the blocks on a calibration sample of the training set (when the selection needs scores),
select layers, inject LoRA, train with AdamW and a linear warmup/decay schedule (gradient accumulation,
clipping, autocast on GPU), evaluate after every epoch, keep the best epoch's adapter (PEFT format), and write
``report.json`` plus PNG plots. Under torchrun the same run is data-parallel (see `distributed`).
"""
import contextlib
import dataclasses
import json
import math
import os
import random
import tempfile
import time
from typing import Optional

import numpy as np
import torch

from . import distributed as dist_utils
from .accounting import StepProfiler, trainable_parameters
from .glue import GlueData, GlueTask, TokenizedDataset, compute_metrics, get_task, load_glue, task_score

SELECTIONS = ("all", "activation", "gradient", "random", "bottom", "first", "last")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# Classification heads across transformers' architectures; whichever exist are trained in full.
DEFAULT_HEAD_MODULES = ("classifier", "pooler", "score", "pre_classifier")


@dataclasses.dataclass
class TrainConfig:
    """Everything one run needs. Defaults are tuned for LoRA on small encoders: lr 2e-3 (LoRA wants about
    ten times full fine-tuning's), batch 8, warmup 6 %, classification head trained in full.

    Layer selection: ``selection`` is one of
    ``"all"`` (LoRA in every block), ``"activation"`` (Act-LoRA: the blocks with the largest input activation
    norms), ``"gradient"`` (largest gradient norms), ``"random"``, ``"bottom"`` (smallest activation norms),
    ``"first"`` / ``"last"`` (the lowest / topmost blocks of the stack). How many: ``k`` blocks, a
    ``fraction`` of them, or the fewest covering a ``cumulative`` share of the total score. Left as None it
    is ``"activation"`` when k/fraction/cumulative is given, else ``"all"``.
    """
    model: str
    task: str = "sst2"
    data_dir: Optional[str] = None
    output_dir: Optional[str] = None
    # which blocks get LoRA
    selection: Optional[str] = None
    k: Optional[int] = None
    fraction: Optional[float] = None
    cumulative: Optional[float] = None
    calibration_samples: int = 256
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
    save_adapter: bool = True
    plots: bool = True
    progress: bool = True

    def __post_init__(self):
        for name in ("model", "data_dir", "output_dir", "resume_from"):
            if isinstance(getattr(self, name), os.PathLike):
                setattr(self, name, os.fspath(getattr(self, name)))
        if not isinstance(self.model, str) or not self.model:
            raise TypeError(f"model must be a path or hub id (non-empty str), got {self.model!r}")
        if not isinstance(self.task, GlueTask):
            get_task(self.task)
        if self.selection is None:
            chosen = any(v is not None for v in (self.k, self.fraction, self.cumulative))
            self.selection = "activation" if chosen else "all"
        if self.selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {', '.join(SELECTIONS)}, got {self.selection!r}")
        given = [n for n in ("k", "fraction", "cumulative") if getattr(self, n) is not None]
        if len(given) > 1:
            raise ValueError(f"give at most one of k, fraction, cumulative; got {', '.join(given)}")
        if self.selection != "all" and not given:
            raise ValueError(f"selection {self.selection!r} needs k, fraction or cumulative")
        if self.selection == "all" and given:
            raise ValueError(f"selection 'all' takes no {given[0]}")
        if self.k is not None:
            _check_int("k", self.k, 1)
        for name in ("fraction", "cumulative"):
            value = getattr(self, name)
            if value is not None and not (_is_number(value) and 0 < value <= 1):
                raise ValueError(f"{name} must be in (0, 1], got {value!r}")
        for name, optional in (("dropout", False), ("warmup_ratio", False), ("weight_decay", False),
                               ("loraplus_lr_ratio", True), ("max_grad_norm", True)):
            value = getattr(self, name)
            if not (_is_number(value) or (optional and value is None)):
                raise TypeError(f"{name} must be a number{' or None' if optional else ''}, got {value!r}")
        for name in ("group_by_length", "save_adapter", "plots", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if isinstance(self.modules_to_save, str):
            self.modules_to_save = [self.modules_to_save]  # one module name, as apply_act_lora takes it
        if self.modules_to_save is not None and not (
                isinstance(self.modules_to_save, (list, tuple))
                and all(isinstance(n, str) and n for n in self.modules_to_save)):
            raise TypeError(f"modules_to_save must be None or a list of module names, got {self.modules_to_save!r}")
        from ..anatomy import check_target_modules
        from ..functional import check_backend_name

        check_target_modules(self.target_modules)
        check_backend_name(self.backend)
        if self.device != "auto":
            try:
                torch.device(self.device)
            except (RuntimeError, TypeError):
                raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}") from None
        for name, low in (("calibration_samples", 1), ("r", 1), ("epochs", 1), ("batch_size", 1),
                          ("eval_batch_size", 1), ("grad_accum_steps", 1), ("max_seq_len", 8), ("seed", 0)):
            _check_int(name, getattr(self, name), low)
        for name in ("max_train_samples", "max_eval_samples", "eval_steps"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), 1)
        for name, low, high in (("learning_rate", 0, math.inf), ("alpha", 0, math.inf)):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not low < value < high:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.loraplus_lr_ratio is not None and not self.loraplus_lr_ratio > 0:
            raise ValueError(f"loraplus_lr_ratio must be > 0 or None, got {self.loraplus_lr_ratio!r}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0 or None, got {self.max_grad_norm!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.resume_from is not None and not os.path.isdir(self.resume_from):
            raise FileNotFoundError(f"resume_from: adapter folder not found: {self.resume_from}")

    @property
    def selection_label(self):
        """A short name for tables: "all", "activation@50%", "random@k=3", ..."""
        if self.selection == "all":
            return "all"
        if self.fraction is not None:
            return f"{self.selection}@{self.fraction:.0%}"
        if self.k is not None:
            return f"{self.selection}@k={self.k}"
        return f"{self.selection}@cum={self.cumulative:g}"


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_int(name, value, low):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")


@dataclasses.dataclass
class TrainResult:
    model: torch.nn.Module   # the trained model, best epoch's adapter loaded back when it was saved
    report: dict
    output_dir: Optional[str]
    scores: object = None    # the LayerScores the selection used (None for "all" and resumed runs)


# ---------------------------------------------------------------------------------------------- helpers
def set_seed(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def write_json_atomic(path, obj):
    """Write JSON through a temp file in the same folder and os.replace, so readers never see half a file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(obj, handle, indent=2, default=_json_default)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _json_default(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, (torch.device, torch.dtype)):
        return str(obj)
    if isinstance(obj, (set, tuple)):
        return list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def autocast_dtype(precision, device):
    """The autocast dtype for `precision` on `device` (None: plain fp32)."""
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def _autocast(dtype, device):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def load_model_and_tokenizer(model_name_or_path, task):
    """A sequence classifier with the task's number of labels, and its tokenizer (pad token ensured)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    task = get_task(task)
    model_name_or_path = os.fspath(model_name_or_path)
    looks_local = model_name_or_path.startswith(("/", "./", "../", "~")) or os.path.exists(model_name_or_path)
    if looks_local and not os.path.isdir(os.path.expanduser(model_name_or_path)):
        raise FileNotFoundError(f"model folder not found: {model_name_or_path}")
    model_name_or_path = os.path.expanduser(model_name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(model_name_or_path)
    verbosity, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # the "classifier newly initialised" report is expected here
    hf_logging.disable_progress_bar()
    try:
        model = AutoModelForSequenceClassification.from_pretrained(model_name_or_path,
                                                                   num_labels=task.num_labels)
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()
    if tokenizer.pad_token is None:  # decoder-only models (GPT-2, Llama) ship without one
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def head_modules(model, requested=None):
    """The names of modules trained in full: `requested`, or the classification head modules present."""
    if requested is not None:
        return list(requested)
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules() if name}
    return [name for name in DEFAULT_HEAD_MODULES if name in names]


def _to_device(batch, device):
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}


def _calibration_batches(dataset, config, ctx):
    """This rank's share of a seeded calibration sample of the training set, as model input batches."""
    n = min(config.calibration_samples, len(dataset))
    picked = random.Random(config.seed).sample(range(len(dataset)), n)
    mine = picked[ctx.rank::ctx.world_size]
    batches = []
    for start in range(0, len(mine), config.eval_batch_size):
        batch = dataset.collate([dataset[i] for i in mine[start:start + config.eval_batch_size]])
        batches.append(_to_device(batch, ctx.device))
    return batches


def _without_labels(batches):
    return [{k: v for k, v in batch.items() if k != "labels"} for batch in batches]


# ---------------------------------------------------------------------------------------------- selection
def needs_profile(config):
    """Whether `config`'s selection needs block scores (positional baselines don't, unless cumulative)."""
    if config.selection == "all":
        return False
    return config.selection in ("activation", "gradient", "bottom") or config.cumulative is not None


def profile_kind(config):
    return "gradient" if config.selection == "gradient" else "activation"


def choose_layers(model, config, calibration, ctx, *, scores=None):
    """Profile (when the selection needs scores and none are given) and select blocks, alike on every rank.

    Returns (layers, scores, profile_seconds); `scores` is the `LayerScores` used, or None.
    """
    from .. import profile_activations, profile_gradients, select_layers
    from ..anatomy import find_blocks

    n_blocks = len(find_blocks(model).blocks)
    if config.selection == "all":
        return list(range(n_blocks)), None, 0.0
    seconds = 0.0
    if scores is None and needs_profile(config):
        start = time.perf_counter()
        progress = config.progress and ctx.is_main
        if config.selection == "gradient":
            scores = profile_gradients(model, calibration, seed=config.seed,
                                       target_modules=config.target_modules, progress=progress)
        else:
            scores = profile_activations(model, _without_labels(calibration),
                                         target_modules=config.target_modules, progress=progress)
        seconds = time.perf_counter() - start
    strategy = "top" if config.selection in ("activation", "gradient") else config.selection
    layers = select_layers(scores if scores is not None else [0.0] * n_blocks, k=config.k,
                           fraction=config.fraction, cumulative=config.cumulative, strategy=strategy,
                           seed=config.seed)
    # Scores are all-reduced, so ranks agree; broadcasting rank 0's choice also guards against float ties.
    layers = dist_utils.broadcast_object([int(i) for i in layers], ctx)
    return layers, scores, seconds


def _scores_report(scores, reused):
    if scores is None:
        return None
    return {"metric": scores.metric, "scores": [float(s) for s in scores.scores],
            "ranking": [int(i) for i in scores.ranking()], "reused_profile": reused}


# ---------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model, eval_sets, task, *, batch_size=64, ctx=None, amp_dtype=None, progress=False):
    """Metrics of `model` on ``{split: TokenizedDataset}``; returns ``{"metrics", "by_split", "score"}``.

    ``metrics`` is flat (``accuracy``, ``f1``...; with several splits prefixed by the split's name, e.g.
    ``matched_accuracy``); ``score`` is the task's GLUE score (0-100). Under DDP each rank scores a shard
    and the predictions are gathered, so the numbers equal a single-process run's.
    """
    task = get_task(task)
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(eval_sets, dict):
        raise TypeError(f"eval_sets must be a dict {{split name: TokenizedDataset}}, got {type(eval_sets).__name__}")
    if not eval_sets:
        raise ValueError("eval_sets is empty: give at least one split")
    for split, dataset in eval_sets.items():
        if not all(hasattr(dataset, name) for name in ("features", "labels", "collate")):  # a TokenizedDataset
            raise TypeError(f"eval_sets[{split!r}] must be a TokenizedDataset, got {type(dataset).__name__}")
    _check_int("batch_size", batch_size, 1)
    ctx = ctx or dist_utils.DistributedContext(device=next(model.parameters()).device)
    was_training = model.training
    model.eval()
    by_split = {}
    try:
        for split, dataset in eval_sets.items():
            # Batching by length wastes no compute on padding; the gather restores the order.
            indices = sorted(dist_utils.eval_shard(len(dataset), ctx),
                             key=lambda i: len(dataset.features[i]["input_ids"]))
            predictions = []
            chunks = range(0, len(indices), batch_size)
            if progress:
                from tqdm.auto import tqdm
                chunks = tqdm(chunks, desc=f"eval {split}", leave=False, dynamic_ncols=True)
            for start in chunks:
                batch = dataset.collate([dataset[i] for i in indices[start:start + batch_size]])
                batch = _to_device(batch, ctx.device)
                batch.pop("labels")
                with _autocast(amp_dtype, ctx.device):
                    logits = model(**batch).logits.float()
                if task.is_regression:
                    predictions.extend(logits.squeeze(-1).tolist())
                else:
                    predictions.extend(logits.argmax(-1).tolist())
            predictions = dist_utils.gather_predictions(indices, predictions, ctx)
            by_split[split] = compute_metrics(task, predictions, dataset.labels)
    finally:
        model.train(was_training)
    if len(by_split) == 1:
        metrics = dict(next(iter(by_split.values())))
    else:
        metrics = {f"{split}_{name}": value for split, values in by_split.items() for name, value in values.items()}
    return {"metrics": metrics, "by_split": by_split, "score": task_score(task, by_split)}


# ---------------------------------------------------------------------------------------------- training
def _build_optimizer(model, config, total_steps):
    """AdamW in three groups: LoRA B (LoRA+ learning rate), other matrices (decayed), vectors (no decay)."""
    from transformers import get_linear_schedule_with_warmup

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise RuntimeError("the model has no trainable parameters after LoRA injection")
    ratio = config.loraplus_lr_ratio or 1.0
    lora_b = [p for n, p in named if n.endswith("lora_B.weight")] if ratio != 1.0 else []
    taken = {id(p) for p in lora_b}
    decay = [p for n, p in named if p.dim() >= 2 and id(p) not in taken]
    no_decay = [p for n, p in named if p.dim() < 2]  # biases and norms, as in BERT's recipe
    groups = [{"params": decay, "weight_decay": config.weight_decay},
              {"params": no_decay, "weight_decay": 0.0},
              {"params": lora_b, "weight_decay": config.weight_decay, "lr": config.learning_rate * ratio}]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=config.learning_rate)
    warmup = int(round(config.warmup_ratio * total_steps))
    scheduler = get_linear_schedule_with_warmup(optimizer, warmup, total_steps)
    return optimizer, scheduler


def train(config, *, model=None, tokenizer=None, data=None, layer_scores=None):
    """Run one fine-tuning job; returns a `TrainResult` (the report is also written to output_dir).

    Pass `model` and `tokenizer` to train objects you already hold (else ``config.model`` is loaded), `data`
    as a `GlueData` (else the task is loaded from ``config.data_dir`` or the hub). `layer_scores` reuses a
    profile (``{"activation"|"gradient": LayerScores}``) across runs of one model, as `compare` does.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    if data is not None and not isinstance(data, GlueData):
        raise TypeError(f"data must be a GlueData, got {type(data).__name__}")
    if (model is None) != (tokenizer is None):
        raise ValueError("pass model and tokenizer together (or neither, to load config.model)")
    if model is not None and not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (or None to load config.model), got {type(model).__name__}")
    if layer_scores is not None and not isinstance(layer_scores, dict):
        raise TypeError(f"layer_scores must be a dict {{'activation'|'gradient': LayerScores}}, got "
                        f"{type(layer_scores).__name__}")
    from .. import apply_act_lora, load_adapter, save_adapter
    from ..anatomy import find_blocks

    run_start = time.perf_counter()
    ctx = dist_utils.init_distributed(config.device)
    set_seed(config.seed)
    task = data.task if data is not None else get_task(config.task)
    if data is None and not task.folder:
        raise ValueError(f"task {task.name!r} has no GLUE files to load; pass its data")
    if data is None:
        data = load_glue(task, config.data_dir, max_train_samples=config.max_train_samples,
                         max_eval_samples=config.max_eval_samples, seed=config.seed)
    if model is None:
        model, tokenizer = load_model_and_tokenizer(config.model, task)
    model.to(ctx.device)
    train_set = TokenizedDataset(data.train, tokenizer, config.max_seq_len, regression=task.is_regression)
    eval_sets = {name: TokenizedDataset(rows, tokenizer, config.max_seq_len, regression=task.is_regression)
                 for name, rows in data.eval.items()}
    n_blocks = len(find_blocks(model).blocks)
    total_params = sum(p.numel() for p in model.parameters())

    # ---- layers and adapter
    profile_seconds, scores_obj, reused_profile = 0.0, None, False
    modules_to_save = head_modules(model, config.modules_to_save)
    if config.resume_from is not None:
        load_adapter(model, config.resume_from, backend=config.backend)
        layers = list(model.act_lora_config.layers)
    else:
        cached = (layer_scores or {}).get(profile_kind(config))
        calibration = None
        if cached is None and needs_profile(config):
            calibration = _calibration_batches(train_set, config, ctx)
        layers, scores_obj, profile_seconds = choose_layers(model, config, calibration, ctx, scores=cached)
        reused_profile = cached is not None and scores_obj is cached
        del calibration
        set_seed(config.seed)  # the adapter's init must not depend on how much profiling drew from the RNG
        apply_act_lora(model, layers, target_modules=config.target_modules, r=config.r, alpha=config.alpha,
                       dropout=config.dropout, modules_to_save=modules_to_save, backend=config.backend,
                       verbose=False)
    model.to(ctx.device)
    n_trainable = trainable_parameters(model)

    # ---- optimisation setup
    if config.group_by_length:
        sampler = dist_utils.LengthGroupedBatchSampler([len(f["input_ids"]) for f in train_set.features],
                                                       config.batch_size, seed=config.seed, rank=ctx.rank,
                                                       world_size=ctx.world_size)
        loader = torch.utils.data.DataLoader(train_set, batch_sampler=sampler, collate_fn=train_set.collate)
    else:
        sampler = dist_utils.train_sampler(train_set, ctx, seed=config.seed)
        loader = torch.utils.data.DataLoader(train_set, batch_size=config.batch_size, sampler=sampler,
                                             collate_fn=train_set.collate)
    steps_per_epoch = math.ceil(len(loader) / config.grad_accum_steps)
    total_steps = steps_per_epoch * config.epochs
    optimizer, scheduler = _build_optimizer(model, config, total_steps)
    amp_dtype = autocast_dtype(config.precision, ctx.device)
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=amp_dtype == torch.float16)
    train_model = model
    if ctx.is_distributed:
        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        train_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    profiler = StepProfiler(model, optimizer, ctx.device, warmup_steps=1)
    output_dir = config.output_dir
    adapter_dir = os.path.join(output_dir, "adapter") if output_dir and config.save_adapter else None

    # ---- epochs
    history, losses = [], []
    best = None
    train_seconds = eval_seconds = 0.0
    step = 0

    def checkpoint(epoch, train_loss):
        """Evaluate, log, and keep the adapter when it is the best so far (rank 0 writes)."""
        nonlocal best, eval_seconds
        eval_start = time.perf_counter()
        train_loss = dist_utils.mean_over_ranks(train_loss, ctx)
        result = evaluate(model, eval_sets, task, batch_size=config.eval_batch_size, ctx=ctx, amp_dtype=amp_dtype,
                          progress=config.progress and ctx.is_main)
        history.append({"epoch": epoch, "step": step, "train_loss": train_loss, "metrics": result["metrics"],
                        "score": result["score"]})
        if ctx.is_main and config.progress:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in result["metrics"].items())
            print(f"epoch {epoch} step {step}: train loss {train_loss:.4f}, {shown}, score {result['score']:.2f}")
        if best is None or result["score"] > best["score"]:
            best = {"epoch": epoch, "step": step, **result}
            if adapter_dir and ctx.is_main:
                save_adapter(model, adapter_dir, base_model_name_or_path=config.model)
        dist_utils.barrier(ctx)
        seconds = time.perf_counter() - eval_start
        eval_seconds += seconds
        return seconds
    for epoch in range(config.epochs):
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        train_model.train()
        epoch_start, paused = time.perf_counter(), 0.0
        epoch_loss, epoch_batches, window_tokens, window_start = 0.0, 0, 0, time.perf_counter()
        batches = loader
        if config.progress and ctx.is_main:
            from tqdm.auto import tqdm
            batches = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", dynamic_ncols=True)
        step_tokens = 0
        for micro, batch in enumerate(batches):
            batch = _to_device(batch, ctx.device)
            boundary = (micro + 1) % config.grad_accum_steps == 0 or micro + 1 == len(loader)
            sync = contextlib.nullcontext() if boundary or not ctx.is_distributed else train_model.no_sync()
            with sync:
                with profiler.phase("forward"):
                    with _autocast(amp_dtype, ctx.device):
                        loss = train_model(**batch).loss
                    scaled = loss / config.grad_accum_steps
                with profiler.phase("backward"):
                    scaler.scale(scaled).backward()
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"training loss became {loss_value} at epoch {epoch + 1}, step {step}; "
                                         "lower the learning rate or use fp32")
            epoch_loss += loss_value
            epoch_batches += 1
            tokens = int(batch["attention_mask"].sum())
            step_tokens += tokens
            window_tokens += tokens
            if not boundary:
                continue
            with profiler.phase("optimizer"):
                if config.max_grad_norm is not None:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad],
                                                   config.max_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            profiler.end_step(step_tokens)
            step_tokens = 0
            step += 1
            losses.append({"step": step, "loss": loss_value, "lr": scheduler.get_last_lr()[0]})
            if batches is not loader:
                elapsed = time.perf_counter() - window_start
                batches.set_postfix(loss=f"{epoch_loss / epoch_batches:.4f}",
                                    tok_s=f"{window_tokens / elapsed:.0f}" if elapsed > 0 else "-")
            if config.eval_steps and step % config.eval_steps == 0 and micro + 1 < len(loader):
                paused += checkpoint(epoch + 1, epoch_loss / epoch_batches)  # not training time
                train_model.train()
        train_seconds += time.perf_counter() - epoch_start - paused
        checkpoint(epoch + 1, epoch_loss / max(epoch_batches, 1))

    # ---- report
    wall_seconds = time.perf_counter() - run_start
    cost = profiler.summary()
    cost["step_ms_max_over_ranks"] = dist_utils.max_over_ranks(cost["step_ms"], ctx)
    report = {
        "task": task.name,
        "model": config.model,
        "data_source": data.source,
        "train_examples": len(train_set),
        "eval_examples": {name: len(ds) for name, ds in eval_sets.items()},
        **best["metrics"],
        "score": best["score"],
        "metrics": best["metrics"],
        "metrics_by_split": best["by_split"],
        "best_epoch": best["epoch"],
        "best_step": best["step"],
        "history": history,
        "selection": config.selection,
        "selection_label": config.selection_label,
        "num_layers": n_blocks,
        "selected_layers": sorted(int(i) for i in layers) if layers is not None else None,
        "layer_scores": _scores_report(scores_obj, reused_profile),
        "trainable_parameters": n_trainable,
        "lora_parameters": _lora_parameter_count(model),
        "total_parameters": total_params,
        "step_time_ms": {k: cost[f"{k}_ms"] for k in ("forward", "backward", "optimizer", "step")},
        "tokens_per_s": cost["tokens_per_s"],
        "memory": cost["memory"],
        "peak_memory_bytes": cost["memory"]["peak_backward_bytes"],
        "cost": cost,
        "profile_seconds": profile_seconds,
        "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
        "wall_seconds": wall_seconds,
        "devices": ctx.world_size,
        "device_hours": wall_seconds * ctx.world_size / 3600.0,
        "device": str(ctx.device),
        "precision": str(amp_dtype) if amp_dtype is not None else "fp32",
        "optimizer_steps": step,
        "loss_curve": losses,
        "adapter_path": adapter_dir,
        "config": dataclasses.asdict(config),
    }
    if output_dir and ctx.is_main:
        os.makedirs(output_dir, exist_ok=True)
        if config.plots:
            report["plots"] = plot_run(report, output_dir, scores=scores_obj)
        write_json_atomic(os.path.join(output_dir, "report.json"), report)
    dist_utils.barrier(ctx)
    if adapter_dir and best["step"] != step:
        load_adapter(model, adapter_dir, backend=config.backend)  # hand back the best epoch's weights
    return TrainResult(model=model, report=report, output_dir=output_dir, scores=scores_obj)


def _lora_parameter_count(model):
    from ..layer import FastActLoRALinear

    return sum(m.lora_A.weight.numel() + m.lora_B.weight.numel() for m in model.modules()
               if isinstance(m, FastActLoRALinear) and m.lora_A is not None)


# ---------------------------------------------------------------------------------------------- plots
def plot_run(report, output_dir, *, scores=None):
    """PNG plots of one run: loss curve, step-time split, memory; the layer scores when profiled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = {}
    fig, ax = plt.subplots(figsize=(6, 3.5))
    curve = report["loss_curve"]
    ax.plot([p["step"] for p in curve], [p["loss"] for p in curve], lw=1)
    ax.set(xlabel="optimizer step", ylabel="training loss",
           title=f"{report['task']} · {report['selection_label']}")
    written["loss"] = _save_figure(fig, os.path.join(output_dir, "loss.png"))

    fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(9, 3.5))
    phases = ["forward", "backward", "optimizer"]
    bottom = 0.0
    for phase in phases:
        value = report["step_time_ms"][phase]
        ax_time.bar([0], [value], bottom=bottom, label=phase)
        bottom += value
    ax_time.set(xticks=[], ylabel="ms per step (median)", title="step time")
    ax_time.legend(fontsize=8)
    memory = report["memory"]
    keys = ["after_forward_bytes", "peak_backward_bytes", "after_optimizer_bytes"]
    ax_mem.bar(range(len(keys)), [memory[k] / 2**20 for k in keys])
    ax_mem.set_xticks(range(len(keys)), ["after fwd", "peak bwd", "after opt"])
    ax_mem.set(ylabel="MiB", title=f"memory ({memory['source']})")
    written["cost"] = _save_figure(fig, os.path.join(output_dir, "cost.png"))

    if scores is not None:
        path = os.path.join(output_dir, "layer_scores.png")
        scores.plot(path)
        written["layer_scores"] = path
    return written


def _save_figure(fig, path):
    import matplotlib.pyplot as plt

    fig.tight_layout()
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    return path
