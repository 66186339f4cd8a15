"""Calibration batches as the profilers take them: checked, on the model's device, with a token mask."""
import inspect
from collections.abc import Mapping

import torch
from tqdm.auto import tqdm

from .. import _dist
from ..model.hf import TASK_HEADS

LABEL_KEYS = ("labels", "label")


def iterate(batches, max_batches, progress, desc):
    """The first `max_batches` of `batches` (all when None), behind a progress bar on the main rank."""
    if isinstance(batches, (Mapping, torch.Tensor, str)) or not hasattr(batches, "__iter__"):
        raise TypeError("batches must be an iterable of dicts of tensors (a list or a DataLoader), got "
                        f"{type(batches).__name__}; wrap a single batch in a list")
    total = len(batches) if hasattr(batches, "__len__") else None
    if max_batches is not None:
        total = max_batches if total is None else min(total, max_batches)
    bar = tqdm(batches, total=total, desc=desc, disable=not progress or not _dist.is_main_process())
    for index, batch in enumerate(bar):
        if max_batches is not None and index >= max_batches:
            break
        yield batch


def model_device(model):
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


def model_inputs(model, batch):
    """The batch's entries the model's forward takes (labels dropped), on the model's device."""
    if not isinstance(batch, Mapping):
        raise TypeError(f"each batch must be a dict of tensors (tokenizer or DataLoader output), got "
                        f"{type(batch).__name__}")
    parameters = inspect.signature(model.forward).parameters
    accepted = {name for name, p in parameters.items()
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    inputs = {k: v for k, v in batch.items() if k in accepted and k not in LABEL_KEYS}
    if not inputs:
        raise ValueError(f"batch keys {sorted(batch)} include none of {type(model).__name__}.forward's inputs")
    _check_tokens(model, inputs)
    device = model_device(model)
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


def _check_tokens(model, inputs):
    """input_ids: a non-empty (batch, sequence, ...) tensor of ids the embedding has; attention_mask not 1-D."""
    ids = inputs.get("input_ids")
    if ids is not None:
        if not isinstance(ids, torch.Tensor):
            raise TypeError(f"input_ids must be a tensor (tokenizer(..., return_tensors='pt')), got "
                            f"{type(ids).__name__}")
        if ids.dim() < 2 or ids.numel() == 0:
            raise ValueError(f"input_ids has shape {tuple(ids.shape)}; expected a non-empty (batch, sequence) "
                             "tensor")
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise TypeError(f"input_ids must hold integer token ids, got dtype {ids.dtype}")
        try:
            vocab = getattr(model.get_input_embeddings(), "num_embeddings", None)
        except (AttributeError, NotImplementedError):  # not a Hugging Face model, or one without embeddings
            vocab = None
        if isinstance(vocab, int):
            low, high = int(ids.min()), int(ids.max())
            if low < 0 or high >= vocab:
                raise ValueError(f"input_ids hold token id {high if high >= vocab else low}, outside the model's "
                                 f"vocabulary of {vocab} (was the batch made with another model's tokenizer?)")
    mask = inputs.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.dim() < 2:
        raise ValueError(f"attention_mask has shape {tuple(mask.shape)}; expected (batch, sequence)")


def token_mask(inputs):
    """bool (batch, seq) mask of the real tokens, or None when the batch has no token layout."""
    tokens = next((inputs[k] for k in ("input_ids", "inputs_embeds")
                   if isinstance(inputs.get(k), torch.Tensor) and inputs[k].dim() >= 2), None)
    mask = inputs.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.dim() == 2:
        if tokens is not None and tuple(mask.shape) != tuple(tokens.shape[:2]):
            raise ValueError(f"attention_mask has shape {tuple(mask.shape)} but the tokens are "
                             f"{tuple(tokens.shape[:2])} (batch, sequence)")
        return mask.bool()
    if tokens is not None:
        return torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
    return None


def align_mask(mask, lead_shape):
    """The token mask in the shape of an activation's token dims.

    Always a bool mask: an integer mask holding a 2 would otherwise count that token twice.
    Activations that are not one row per token (DeBERTa's relative-position embeddings through key_proj)
    are not token activations and get an all-False mask; unpadded activations (only the real tokens) get
    an all-True one.
    """
    if mask is None:
        return None
    if mask.dtype != torch.bool:
        mask = mask != 0  # an attention mask's 1 (or any non-zero) is one real token, never a weight
    if tuple(mask.shape) == tuple(lead_shape):
        return mask
    if len(lead_shape) == 1:  # tokens flattened to one dim: all of them, or only the real ones
        if mask.numel() == lead_shape[0]:
            return mask.reshape(lead_shape)
        if int(mask.sum()) == lead_shape[0]:
            return torch.ones(lead_shape, dtype=torch.bool, device=mask.device)
    return torch.zeros(lead_shape, dtype=torch.bool, device=mask.device)


def batch_labels(model, batch, device, *, needed_by):
    """The batch's checked labels (``labels`` or ``label``, see `check_labels`) on `device`; a ValueError naming
    `needed_by` when the batch has none."""
    key = next((k for k in LABEL_KEYS if k in batch), None)
    if key is None:
        raise ValueError(f"{needed_by} needs labels: batch keys are {sorted(batch)}, with no 'labels' or 'label'")
    return check_labels(model, batch[key], key).to(device)


def check_labels(model, labels, key):
    """The labels as a tensor; class ids of a classifier must lie in [0, num_labels) (or be -100, ignored)."""
    try:
        labels = labels if isinstance(labels, torch.Tensor) else torch.as_tensor(labels)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"batch[{key!r}] must be a tensor or a list of numbers, got {labels!r}") from None
    if not (labels.is_floating_point() or labels.dtype in (torch.int64, torch.int32, torch.int16, torch.int8,
                                                            torch.uint8)):
        raise TypeError(f"batch[{key!r}] must hold numbers, got dtype {labels.dtype}")
    num_labels = getattr(getattr(model, "config", None), "num_labels", None)
    if (labels.dim() == 1 and not labels.is_floating_point() and isinstance(num_labels, int) and num_labels > 1
            and any(name in TASK_HEADS for name, _ in model.named_children()) and labels.numel()):
        bad = labels[(labels != -100) & ((labels < 0) | (labels >= num_labels))]
        if bad.numel():
            raise ValueError(f"batch[{key!r}] holds class {int(bad[0])}, but the model has num_labels={num_labels} "
                             f"(classes 0..{num_labels - 1})")
    return labels


def without_labels(batches):
    """The batches without their labels (what a forward-only profile feeds the model)."""
    return [{k: v for k, v in batch.items() if k not in LABEL_KEYS} for batch in batches]
