"""Evaluation of a sequence classifier on GLUE splits (DDP-aware), and the precision helpers it shares."""
import contextlib

import torch

from .._checks import check_int
from ..data.glue import compute_metrics, get_task, task_score
from . import distributed as dist_utils


def autocast_dtype(precision, device):
    """The autocast dtype for `precision` on `device` (None: plain fp32)."""
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(dtype, device):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def to_device(batch, device):
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}


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
    check_int("batch_size", batch_size, 1)
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
                batch = to_device(batch, ctx.device)
                batch.pop("labels")
                with autocast(amp_dtype, ctx.device):
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
