"""Evaluation on the held-out splits (DDP- and FSDP-aware): a sequence classifier's GLUE metrics, a causal LM's
mean token loss and perplexity; and the precision helpers training shares."""
import contextlib

import torch

from .._checks import check_int
from ..data.glue import compute_metrics, get_task, task_score
from ..data.text import perplexity, token_loss_sum
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


def flat_metrics(by_split):
    """One split's metrics as they are; several splits' prefixed by the split's name (``matched_accuracy``)."""
    if len(by_split) == 1:
        return dict(next(iter(by_split.values())))
    return {f"{split}_{name}": value for split, values in by_split.items() for name, value in values.items()}


def _split_logits(model, dataset, split, ctx, *, batch_size, amp_dtype, lockstep, progress):
    """This rank's share of `dataset` in batches by length (no compute spent on padding): yields
    ``(indices, logits, labels)``. `lockstep` (an FSDP-sharded model, whose forward is a collective): every
    rank runs as many batches as the rank with the most, the extra ones with ``indices`` empty."""
    indices = sorted(dist_utils.eval_shard(len(dataset), ctx), key=lambda i: len(dataset.features[i]["input_ids"]))
    chunks = [indices[start:start + batch_size] for start in range(0, len(indices), batch_size)]
    rounds = int(dist_utils.max_over_ranks(len(chunks), ctx)) if lockstep else len(chunks)
    steps = range(rounds)
    if progress:
        from tqdm.auto import tqdm
        steps = tqdm(steps, desc=f"eval {split}", leave=False, dynamic_ncols=True)
    for step in steps:
        chunk = chunks[step] if step < len(chunks) else []
        batch = to_device(dataset.collate([dataset[i] for i in chunk or (chunks[-1] if chunks else [0])]), ctx.device)
        labels = batch.pop("labels")
        with autocast(amp_dtype, ctx.device):
            logits = model(**batch).logits
        yield chunk, logits, labels


@contextlib.contextmanager
def _evaluating(model):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _check_eval_sets(model, eval_sets, batch_size, kind, needs):
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(eval_sets, dict):
        raise TypeError(f"eval_sets must be a dict {{split name: {kind}}}, got {type(eval_sets).__name__}")
    if not eval_sets:
        raise ValueError("eval_sets is empty: give at least one split")
    for split, dataset in eval_sets.items():
        if not all(hasattr(dataset, name) for name in needs):
            raise TypeError(f"eval_sets[{split!r}] must be a {kind}, got {type(dataset).__name__}")
    check_int("batch_size", batch_size, 1)


@torch.no_grad()
def evaluate(model, eval_sets, task, *, batch_size=64, ctx=None, amp_dtype=None, progress=False, lockstep=False):
    """Metrics of `model` on ``{split: TokenizedDataset}``; returns ``{"metrics", "by_split", "score"}``.

    ``metrics`` is flat (``accuracy``, ``f1``...; with several splits prefixed by the split's name, e.g.
    ``matched_accuracy``); ``score`` is the task's GLUE score (0-100). Under DDP each rank scores a shard
    and the predictions are gathered, so the numbers equal a single-process run's (`lockstep`: see
    `evaluate_text`).
    """
    task = get_task(task)
    _check_eval_sets(model, eval_sets, batch_size, "TokenizedDataset", ("features", "labels", "collate"))
    ctx = ctx or dist_utils.DistributedContext(device=next(model.parameters()).device)
    options = dict(batch_size=batch_size, amp_dtype=amp_dtype, lockstep=lockstep, progress=progress)
    by_split = {}
    with _evaluating(model):
        for split, dataset in eval_sets.items():
            pairs = []
            for chunk, logits, _ in _split_logits(model, dataset, split, ctx, **options):
                logits = logits.float()
                values = logits.squeeze(-1) if task.is_regression else logits.argmax(-1)
                pairs.extend(zip(chunk, values.tolist()))  # an extra lockstep batch adds nothing
            predictions = dist_utils.gather_predictions([i for i, _ in pairs], [p for _, p in pairs], ctx)
            by_split[split] = compute_metrics(task, predictions, dataset.labels)
    return {"metrics": flat_metrics(by_split), "by_split": by_split, "score": task_score(task, by_split)}


@torch.no_grad()
def evaluate_text(model, eval_sets, *, batch_size=64, ctx=None, amp_dtype=None, progress=False, lockstep=False):
    """Mean next-token loss over every loss token of each split, and its perplexity.

    Returns ``{"metrics": {"loss", "perplexity"}, "by_split", "score"}`` with ``score`` the loss (lower is
    better); with several splits the metrics are prefixed by the split's name and the score is their mean.
    Each rank scores a shard and the sums are all-reduced, so the numbers equal a single-process run's.
    `lockstep` (an FSDP-sharded model, whose forward is a collective): every rank runs as many batches as
    the rank with the most, repeating its last one unscored.
    """
    _check_eval_sets(model, eval_sets, batch_size, "TextDataset", ("features", "collate"))
    ctx = ctx or dist_utils.DistributedContext(device=next(model.parameters()).device)
    options = dict(batch_size=batch_size, amp_dtype=amp_dtype, lockstep=lockstep, progress=progress)
    by_split = {}
    with _evaluating(model):
        for split, dataset in eval_sets.items():
            totals = torch.zeros(2, dtype=torch.float64)
            for chunk, logits, labels in _split_logits(model, dataset, split, ctx, **options):
                if chunk:
                    loss_sum, count = token_loss_sum(logits, labels)
                    totals += torch.tensor([float(loss_sum), float(count)], dtype=torch.float64)
            totals = dist_utils.sum_over_ranks(totals, ctx)
            loss = float(totals[0] / totals[1]) if totals[1] > 0 else float("nan")
            by_split[split] = {"loss": loss, "perplexity": perplexity(loss)}
    score = sum(values["loss"] for values in by_split.values()) / len(by_split)
    return {"metrics": flat_metrics(by_split), "by_split": by_split, "score": score}
