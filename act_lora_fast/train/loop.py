"""The training loop: (selective) LoRA fine-tuning of a sequence classifier on a GLUE task, or of a causal LM on
a text file (``task="text"``), with cost accounting.

From Python::

    from act_lora_fast import TrainConfig, finetune     # finetune is this module's `train`
    result = finetune(TrainConfig(model="path/to/model", task="sst2", data_dir="glue", fraction=0.5,
                               epochs=1, output_dir="runs/sst2"))
    print(result.report["score"], result.report["selected_layers"])

One run, in three steps: `_Run.__init__` sets up (profile the blocks on a calibration sample of the training
set when the selection needs scores, select layers, inject LoRA, build the optimizer); `_Run.train_epoch`
trains one epoch with AdamW and a linear warmup/decay schedule (gradient accumulation, clipping, autocast on
GPU) and evaluates; `_Run.report` assembles ``report.json`` and the plots. The best epoch's adapter is kept
(PEFT format). What differs per kind of task (data, model, loss, evaluation, the score's direction) is the
task object's (`tasks`). Under torchrun the same run is data-parallel: DDP, or FSDP2 with ``fsdp`` (see
`distributed`).
"""
import dataclasses
import logging
import math
import os
import random
import time
import warnings

import numpy as np
import torch

from .. import _dist
from .._io import write_json
from ..functional import resolve_backend
from ..layer import FastActLoRALinear
from ..measure.accounting import StepProfiler, trainable_parameters
from ..model.adapters import load_adapter, save_adapter
from ..model.anatomy import find_blocks
from ..model.hf import activation_checkpointing_on, enable_activation_checkpointing
from ..model.inject import apply_act_lora, apply_head_only, match_modules_to_save
from . import distributed as dist_utils
from .blocks import calibration_batches, choose_layers, needs_profile, profile_kind, scores_report
from .config import TrainConfig, TrainResult
from .evaluate import autocast, autocast_dtype, to_device
from .lock import output_dir_lock
from .outputs import claim_output_dir, earlier_outputs
from .plots import plot_run
from .signals import raise_if_stopped, shielded, stop_reason
from .tasks import task_for

logger = logging.getLogger(__name__)


def set_seed(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _windows(batches, size):
    """The micro-batches of `batches` in lists of `size` (one optimizer step each; the last may be shorter)."""
    window = []
    for batch in batches:
        window.append(batch)
        if len(window) == size:
            yield window
            window = []
    if window:
        yield window


def _lora_parameter_count(model):
    return sum(m.lora_A.weight.numel() + m.lora_B.weight.numel() for m in model.modules()
               if isinstance(m, FastActLoRALinear) and m.lora_A is not None)


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


# ---------------------------------------------------------------------------------------------- one run
class _Run:
    """The state of one run; set up on construction, then `train_epoch` per epoch, then `report`."""

    def __init__(self, config, model, tokenizer, data, layer_scores):
        self.config = config
        self.started = time.perf_counter()
        self.ctx = ctx = dist_utils.init_distributed(config.device)
        if config.fsdp and not ctx.is_distributed:
            raise ValueError("fsdp shards the model across processes: launch with torchrun --nproc-per-node N "
                             "(N >= 2)")
        set_seed(config.seed)
        self.task = task = task_for(getattr(data, "task", None) or config.task)
        if data is None:
            data = task.load_data(config)
        else:
            task.check_data(data)
        if model is None:
            model, tokenizer = task.load_model(config)
        if config.gradient_checkpointing:
            enable_activation_checkpointing(model, config.gradient_checkpointing)
        # Under FSDP the whole model goes to the device only when profiling needs it; sharding moves the rest.
        if not config.fsdp or (config.resume_from is None and needs_profile(config)):
            model.to(ctx.device)
        self.data, self.model = data, model
        self.train_set, self.eval_sets = task.datasets(data, tokenizer, config)
        self.n_blocks = len(find_blocks(model).blocks)
        self.total_params = sum(p.numel() for p in model.parameters())
        self.notes = []
        dropped = getattr(self.train_set, "dropped", 0)
        if dropped:
            self._note(f"{dropped} training row(s) kept no loss token within max_seq_len={config.max_seq_len} "
                       f"and were left out (first: {self.train_set.dropped_where[0]})")
        self._inject(layer_scores)
        if not config.fsdp:
            model.to(ctx.device)
        self.n_trainable = trainable_parameters(model)
        self._build_training()
        self.output_dir = config.output_dir
        self.adapter_dir = (os.path.join(config.output_dir, "adapter")
                            if config.output_dir and config.save_adapter and self.layers else None)
        if config.output_dir and config.save_adapter and not self.layers:
            self._note("selection 'none' trains only the head: there is no LoRA adapter to save")
        self.history, self.losses = [], []
        self.best = None
        self.train_seconds = self.eval_seconds = 0.0
        self.step = self.epochs_done = 0

    def _inject(self, layer_scores):
        config, model, ctx = self.config, self.model, self.ctx
        self.profile_seconds, self.scores, self.reused_profile = 0.0, None, False
        if config.resume_from is not None:
            self._resume()
            return
        cached = (layer_scores or {}).get(profile_kind(config))
        calibration = None
        if cached is None and needs_profile(config):
            calibration = calibration_batches(self.train_set, config, ctx)
        self.layers, self.scores, self.profile_seconds = choose_layers(model, config, calibration, ctx,
                                                                       scores=cached)
        self.reused_profile = cached is not None and self.scores is cached
        set_seed(config.seed)  # the adapter's init must not depend on how much profiling drew from the RNG
        heads = self.task.heads(model, config)
        if not self.layers:
            apply_head_only(model, modules_to_save=heads, r=config.r, alpha=config.alpha, dropout=config.dropout)
            return
        apply_act_lora(model, self.layers, target_modules=config.target_modules, r=config.r, alpha=config.alpha,
                       dropout=config.dropout, modules_to_save=heads, backend=config.backend, verbose=False)

    def _resume(self):
        """Load ``resume_from``: its layers, rank, alpha, dropout (the config's are not used: warned when they
        differ) and weights; a head it does not save (a PEFT adapter without modules_to_save) is trained."""
        config, model = self.config, self.model
        load_adapter(model, config.resume_from, backend=config.backend)
        adapter = model.act_lora_config
        self.layers = list(adapter.layers)
        used = {"r": adapter.r, "alpha": adapter.alpha, "dropout": adapter.dropout}
        differ = [f"{name}={getattr(config, name)!r}" for name, value in used.items()
                  if getattr(config, name) != value]
        if differ:
            self._note(f"resume_from {config.resume_from}: the adapter's r={adapter.r}, alpha={adapter.alpha}, "
                       f"dropout={adapter.dropout} are used; the config's {', '.join(differ)} (ignored)")
        if not adapter.modules_to_save:
            heads = self.task.heads(model, config)
            for module in match_modules_to_save(model, heads).values():
                for param in module.parameters():
                    param.requires_grad_(True)
            adapter.modules_to_save = list(heads)
            if heads:
                self._note(f"resume_from {config.resume_from}: the adapter saves no modules_to_save, so the "
                           f"classification head ({', '.join(heads)}) starts untrained; it is trained in full "
                           "in this run and saved with the adapter")

    def _note(self, message):
        self.notes.append(message)
        if self.ctx.is_main:
            warnings.warn(message, UserWarning, stacklevel=4)

    def lora_values(self):
        """The adapter's hyper-parameters actually in use (a resumed adapter's, not the config's)."""
        adapter = self.model.act_lora_config
        return {"r": adapter.r, "alpha": adapter.alpha, "dropout": adapter.dropout, "use_rslora": adapter.use_rslora}

    def _build_training(self):
        config, ctx, train_set = self.config, self.ctx, self.train_set
        if config.group_by_length:
            self.sampler = dist_utils.LengthGroupedBatchSampler(
                [len(f["input_ids"]) for f in train_set.features], config.batch_size, seed=config.seed,
                rank=ctx.rank, world_size=ctx.world_size)
            self.loader = torch.utils.data.DataLoader(train_set, batch_sampler=self.sampler,
                                                      collate_fn=train_set.collate)
        else:
            self.sampler = dist_utils.train_sampler(train_set, ctx, seed=config.seed)
            self.loader = torch.utils.data.DataLoader(train_set, batch_size=config.batch_size, sampler=self.sampler,
                                                      collate_fn=train_set.collate)
        total_steps = math.ceil(len(self.loader) / config.grad_accum_steps) * config.epochs
        self.amp_dtype = self.autocast_dtype = autocast_dtype(config.precision, ctx.device)
        if self.amp_dtype is torch.float16 and ctx.device.type == "cpu":
            self._note("precision fp16 on CPU: the CPU has no fast fp16 kernels, so steps run many times slower "
                       "than in fp32 (the CPU default) or bf16")
        self.train_model = self.model
        if config.fsdp:  # bf16 is FSDP2's mixed-precision policy (weights gathered in bf16), not autocast
            self.autocast_dtype = None
            dist_utils.shard_model(self.model, reshard_after_forward=config.reshard_after_forward,
                                   param_dtype=self.amp_dtype)
        elif ctx.is_distributed:
            device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
            # a checkpointed block runs its forward twice: DDP must know the graph is the same each step
            self.train_model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=device_ids, static_graph=activation_checkpointing_on(self.model))
        self.optimizer, self.scheduler = _build_optimizer(self.model, config, total_steps)  # on the shards
        self.scaler = torch.amp.GradScaler(ctx.device.type, enabled=self.amp_dtype == torch.float16)
        self.profiler = StepProfiler(self.model, self.optimizer, ctx.device, warmup_steps=1)

    def checkpoint(self, epoch, train_loss):
        """Evaluate, log, and keep the adapter when it is the best so far (rank 0 writes); the seconds spent."""
        config, ctx = self.config, self.ctx
        eval_start = time.perf_counter()
        train_loss = dist_utils.mean_over_ranks(train_loss, ctx)
        result = self.task.evaluate(self.model, self.eval_sets, batch_size=config.eval_batch_size, ctx=ctx,
                                    amp_dtype=self.autocast_dtype, progress=config.progress and ctx.is_main,
                                    lockstep=config.fsdp)
        self.history.append({"epoch": epoch, "step": self.step, "train_loss": train_loss,
                             "metrics": result["metrics"], "score": result["score"]})
        if ctx.is_main and config.progress:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in result["metrics"].items())
            logger.info(f"epoch {epoch} step {self.step}: train loss {train_loss:.4f}, {shown}, "
                        f"{self.task.score_name} {result['score']:.4f}")
        if self.best is None or self._better(result["score"], self.best["score"]):
            # saved first: a failed save leaves best at the adapter on disk
            if self.adapter_dir and config.fsdp:
                dist_utils.save_sharded_adapter(self.model, self.adapter_dir, ctx, base_model_name_or_path=config.model)
            elif self.adapter_dir and ctx.is_main:
                save_adapter(self.model, self.adapter_dir, base_model_name_or_path=config.model)
            self.best = {"epoch": epoch, "step": self.step, **result}
        dist_utils.barrier(ctx)
        seconds = time.perf_counter() - eval_start
        self.eval_seconds += seconds
        return seconds

    def _better(self, score, best):
        return score > best if self.task.higher_is_better else score < best

    def train_epoch(self, epoch):
        config, ctx, loader, profiler, task = self.config, self.ctx, self.loader, self.profiler, self.task
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)
        self.train_model.train()
        epoch_start, paused = time.perf_counter(), 0.0
        # classification: the sum of batch-mean losses over batches; text: token-loss sums over loss tokens
        epoch_loss, epoch_items, window_tokens, window_start = 0.0, 0, 0, time.perf_counter()
        batches = loader
        if config.progress and ctx.is_main:
            from tqdm.auto import tqdm
            batches = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", dynamic_ncols=True)
        consumed = 0
        for window in _windows(batches, config.grad_accum_steps):
            window = [to_device(batch, ctx.device) for batch in window]
            consumed += len(window)
            if task.token_weighted:  # every loss token of the step, on every rank, weighs the same
                items = float(dist_utils.sum_over_ranks(torch.tensor(
                    [float(sum(task.loss_items(batch) for batch in window))], dtype=torch.float64), ctx)[0])
                scale = ctx.world_size / max(items, 1.0)  # DDP / FSDP average the ranks' gradients
            else:
                items, scale = len(window), 1.0 / config.grad_accum_steps
            step_sum, step_tokens = 0.0, 0
            for index, batch in enumerate(window):
                raise_if_stopped()  # a Ctrl-C that a finaliser swallowed still stops the run here
                with dist_utils.gradient_sync(self.train_model, index + 1 == len(window)):
                    with profiler.phase("forward"):
                        with autocast(self.autocast_dtype, ctx.device):
                            loss = task.loss(self.train_model, batch)
                    with profiler.phase("backward"):
                        self.scaler.scale(loss * scale).backward()
                loss_value = float(loss.detach())
                if not math.isfinite(loss_value):
                    remedy = "lower the learning rate" + (" or use fp32" if self.amp_dtype is not None else "")
                    raise FloatingPointError(f"training loss became {loss_value} at epoch {epoch + 1}, step "
                                             f"{self.step}; {remedy}")
                step_sum += loss_value
                tokens = int(batch["attention_mask"].sum())
                step_tokens += tokens
                window_tokens += tokens
            if task.token_weighted:
                step_loss = float(dist_utils.sum_over_ranks(torch.tensor([step_sum], dtype=torch.float64), ctx)[0])
                epoch_loss += step_loss
                step_loss /= max(items, 1.0)
            else:
                step_loss = loss_value  # the last micro-batch's
                epoch_loss += step_sum
            epoch_items += items
            self._optimizer_step()
            profiler.end_step(step_tokens)
            self.step += 1
            self.losses.append({"step": self.step, "loss": step_loss, "lr": self.scheduler.get_last_lr()[0]})
            if batches is not loader:
                elapsed = time.perf_counter() - window_start
                batches.set_postfix(loss=f"{epoch_loss / max(epoch_items, 1):.4f}",
                                    tok_s=f"{window_tokens / elapsed:.0f}" if elapsed > 0 else "-")
            if config.eval_steps and self.step % config.eval_steps == 0 and consumed < len(loader):
                paused += self.checkpoint(epoch + 1, epoch_loss / max(epoch_items, 1))  # not training time
                self.train_model.train()
        self.train_seconds += time.perf_counter() - epoch_start - paused
        self.checkpoint(epoch + 1, epoch_loss / max(epoch_items, 1))

    def _optimizer_step(self):
        with self.profiler.phase("optimizer"):
            if self.config.max_grad_norm is not None:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad],
                                               self.config.max_grad_norm)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)

    def report(self):
        config, ctx, best = self.config, self.ctx, self.best
        wall_seconds = time.perf_counter() - self.started
        cost = self.profiler.summary()
        cost["step_ms_max_over_ranks"] = dist_utils.max_over_ranks(cost["step_ms"], ctx)
        return {
            "task": self.task.name,
            "model": config.model,
            "data_source": self.data.source,
            "train_examples": len(self.train_set),
            "eval_examples": {name: len(ds) for name, ds in self.eval_sets.items()},
            **best["metrics"],
            "score": best["score"],
            "score_name": self.task.score_name,
            "higher_is_better": self.task.higher_is_better,
            "metrics": best["metrics"],
            "metrics_by_split": best["by_split"],
            "best_epoch": best["epoch"],
            "best_step": best["step"],
            "history": self.history,
            "selection": "resumed" if config.resume_from is not None else config.selection,
            "selection_label": config.selection_label,
            "num_layers": self.n_blocks,
            "selected_layers": sorted(int(i) for i in self.layers) if self.layers is not None else None,
            "layer_scores": scores_report(self.scores, self.reused_profile),
            "trainable_parameters": self.n_trainable,
            "lora_parameters": _lora_parameter_count(self.model),
            "total_parameters": self.total_params,
            "step_time_ms": {k: cost[f"{k}_ms"] for k in ("forward", "backward", "optimizer", "step")},
            "tokens_per_s": cost["tokens_per_s"],
            "memory": cost["memory"],
            "peak_memory_bytes": cost["memory"]["peak_backward_bytes"],
            "cost": cost,
            "profile_seconds": self.profile_seconds,
            "train_seconds": self.train_seconds,
            "eval_seconds": self.eval_seconds,
            "wall_seconds": wall_seconds,
            "devices": ctx.world_size,
            "device_hours": wall_seconds * ctx.world_size / 3600.0,
            "device": str(ctx.device),
            "precision": str(self.amp_dtype) if self.amp_dtype is not None else "fp32",
            "optimizer_steps": self.step,
            "loss_curve": self.losses,
            "adapter_path": self.adapter_dir,
            "status": "completed",
            "lora": self.lora_values(),
            "resumed_from": config.resume_from,
            "notes": list(self.notes),
            "config": {**dataclasses.asdict(config),
                       **{k: v for k, v in self.lora_values().items() if k != "use_rslora"}},
        }

    def progress_report(self, stage, error):
        """``report.json`` of a run that stopped early: why, and how far it got."""
        config, best = self.config, self.best
        return {
            "status": "interrupted", "reason": error, "stage": stage, "task": self.task.name,
            "model": config.model, "epochs_completed": self.epochs_done, "epochs_planned": config.epochs,
            "optimizer_steps": self.step, "history": self.history, "loss_curve": self.losses,
            "best_epoch": best["epoch"] if best else None, "best_step": best["step"] if best else None,
            "score": best["score"] if best else None, "metrics": best["metrics"] if best else None,
            "selected_layers": sorted(int(i) for i in self.layers) if self.layers is not None else None,
            "adapter_path": self.adapter_dir if best and self.adapter_dir else None,
            "lora": self.lora_values(), "resumed_from": config.resume_from, "notes": list(self.notes),
            "wall_seconds": time.perf_counter() - self.started,
            "config": {**dataclasses.asdict(config),
                       **{k: v for k, v in self.lora_values().items() if k != "use_rslora"}},
        }


def train(config, *, model=None, tokenizer=None, data=None, layer_scores=None):
    """Run one fine-tuning job; returns a `TrainResult` (the report is also written to output_dir).

    Pass `model` and `tokenizer` to train objects you already hold (else ``config.model`` is loaded), `data`
    as a `GlueData` (a `TextData` for task "text"; else the task's data is loaded from ``config.data_dir``,
    the hub or ``config.train_file``). `layer_scores` reuses a
    profile (``{"activation"|"gradient": LayerScores}``) across runs of one model, as `compare` does.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    if (model is None) != (tokenizer is None):
        raise ValueError("pass model and tokenizer together (or neither, to load config.model)")
    if model is not None and not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (or None to load config.model), got {type(model).__name__}")
    if layer_scores is not None and not isinstance(layer_scores, dict):
        raise TypeError(f"layer_scores must be a dict {{'activation'|'gradient': LayerScores}}, got "
                        f"{type(layer_scores).__name__}")
    folder = config.output_dir if _dist.is_main_process() else None
    with output_dir_lock(folder):  # one run per folder; a run stopped during setup leaves no folder
        return _train(config, model, tokenizer, data, layer_scores)


def _train(config, model, tokenizer, data, layer_scores):
    _preflight(config)
    run = _Run(config, model, tokenizer, data, layer_scores)
    stage = "training"
    try:
        for epoch in range(config.epochs):
            run.train_epoch(epoch)
            run.epochs_done = epoch + 1
        stage = "report"
        report = run.report()
        if run.output_dir and run.ctx.is_main:
            if config.plots:
                report["plots"] = plot_run(report, run.output_dir, scores=run.scores)
            write_json(os.path.join(run.output_dir, "report.json"), report)
    except BaseException as err:
        with shielded():  # a second Ctrl-C must not cut the report short
            _write_interrupted_report(config, run, stage, err)
        raise
    dist_utils.barrier(run.ctx)
    if run.adapter_dir and run.best["step"] != run.step:
        if config.fsdp:  # hand back the best epoch's weights
            dist_utils.load_sharded_adapter_weights(run.model, run.adapter_dir)
        else:
            load_adapter(run.model, run.adapter_dir, backend=config.backend)
    return TrainResult(model=run.model, report=report, output_dir=run.output_dir, scores=run.scores)


def _preflight(config):
    """What can be checked before loading anything: the device, the backend on it, the output folder."""
    if config.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(config.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {config.device!r}: CUDA is not available on this machine; use device "
                             "'cpu' or 'auto'")
    try:
        resolve_backend(config.backend, device)
    except RuntimeError as err:
        raise ValueError(f"backend {config.backend!r} on {device.type}: {err}") from None
    if config.output_dir and _dist.is_main_process():
        if config.overwrite and config.resume_from is not None:
            _check_resume_source_kept(config)
        claim_output_dir(config.output_dir, overwrite=config.overwrite)


def _check_resume_source_kept(config):
    """`overwrite` deletes the earlier run's outputs before anything is loaded: never the adapter to resume."""
    source = os.path.realpath(config.resume_from)
    for name in earlier_outputs(config.output_dir):
        doomed = os.path.realpath(os.path.join(config.output_dir, name))
        if source == doomed or source.startswith(doomed + os.sep):
            raise ValueError(f"resume_from {config.resume_from} is the earlier run's {name} in output_dir "
                             f"{config.output_dir}, which overwrite=True would delete before it is read; copy "
                             "the adapter elsewhere first, or write to another output folder")


def _write_interrupted_report(config, run, stage, err):
    """On Ctrl-C or an error once training has started, leave a ``report.json`` that says so. (A run stopped
    during setup never gets here: it has written nothing and leaves nothing, see `output_dir_lock`.)"""
    if not config.output_dir or not _dist.is_main_process():
        return
    report = run.progress_report(stage, stop_reason(err))
    try:
        write_json(os.path.join(config.output_dir, "report.json"), report)
    except OSError:
        pass  # the original error is the one to report
