"""Act-LoRA's layer importance: activation profiling (the method) and gradient profiling (the baseline).

`profile_activations` runs the frozen model over a few calibration batches with every targeted linear swapped
for a probe-mode FastActLoRALinear, so each block's input-norm statistics come out of the fused kernel's
reduction. The original module objects are put back afterwards, even on error: the model is left exactly
as it was. Padding tokens (``attention_mask == 0``) never count, so batching does not change the scores.
Under torch.distributed the raw sums and counts are all-reduced, so every rank gets identical scores.
"""
import contextlib
import dataclasses
import inspect
import json
import math
import numbers
import os
from collections.abc import Mapping

import torch
from torch import nn
from tqdm.auto import tqdm

from .adapters import atomic_write
from .anatomy import (as_linear, find_blocks, is_conv1d, linear_shape, replace_module, target_linears,
                      unwrap_model)
from .layer import FastActLoRALinear

METRICS = ("input_norm", "input_rms", "block_output")
GRADIENT_METRIC = "gradient_norm"
LABEL_KEYS = ("labels", "label")
HEAD_NAMES = ("classifier", "score", "qa_outputs")  # the task heads that profile_gradients re-draws
_FORMAT = "act_lora_fast.LayerScores"


# ---------------------------------------------------------------------------------------------- LayerScores
@dataclasses.dataclass
class LayerScores:
    """Per-block importance scores (block order) with per-module values and what produced them.

    ``module_shapes`` maps each profiled module to ``[out_features, in_features]`` so parameter counts can
    be computed from a scores file alone (`lora_parameters`).
    """
    scores: list
    module_scores: dict = dataclasses.field(default_factory=dict)
    metric: str = "input_norm"
    block_path: str = ""
    layers_pattern: str = ""
    module_shapes: dict = dataclasses.field(default_factory=dict)
    num_tokens: int = 0
    num_batches: int = 0
    meta: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if isinstance(self.scores, (str, bytes, Mapping)) or not hasattr(self.scores, "__iter__"):
            raise TypeError(f"scores must be a list of numbers, got {type(self.scores).__name__}")
        scores = list(self.scores)
        for value in scores:
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(f"scores must hold numbers, got {value!r} ({type(value).__name__})")
        self.scores = [float(v) for v in scores]
        for name in ("module_scores", "module_shapes", "meta"):
            if not isinstance(getattr(self, name), Mapping):
                raise TypeError(f"{name} must be a dict, got {type(getattr(self, name)).__name__}")
        for name, value in self.module_scores.items():
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(f"module_scores[{name!r}] must be a number, got {value!r}")
        for name, shape in self.module_shapes.items():
            if (isinstance(shape, (str, bytes)) or not isinstance(shape, (list, tuple)) or len(shape) != 2
                    or not all(isinstance(d, numbers.Integral) and not isinstance(d, bool) and d > 0
                               for d in shape)):
                raise ValueError(f"module_shapes[{name!r}] must be [out_features, in_features] (two positive "
                                 f"ints), got {shape!r}")
        for name in ("metric", "block_path", "layers_pattern"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"{name} must be a str, got {getattr(self, name)!r}")
        for name in ("num_tokens", "num_batches"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        self.module_scores = {str(k): float(v) for k, v in self.module_scores.items()}
        self.module_shapes = {str(k): [int(d) for d in v] for k, v in self.module_shapes.items()}
        self.meta = dict(self.meta)

    def __len__(self):
        return len(self.scores)

    @property
    def num_blocks(self):
        return len(self.scores)

    def ranking(self):
        """Block indices, most important first; ties go to the lower index."""
        return sorted(range(len(self.scores)), key=lambda i: (-self.scores[i], i))

    def block_of(self, module_name):
        """The block index holding `module_name`, or None when it is outside ``block_path``."""
        prefix = self.block_path + "."
        if not module_name.startswith(prefix):
            return None
        head = module_name[len(prefix):].split(".", 1)[0]
        return int(head) if head.isdigit() else None

    def lora_parameters(self, layers=None, r=8):
        """LoRA parameters r·(in + out) over the profiled modules of `layers` (None: all blocks)."""
        if not self.module_shapes:
            raise ValueError("these scores carry no module shapes; count parameters on the model instead")
        from .inject import check_layers

        if isinstance(r, bool) or not isinstance(r, numbers.Integral) or r < 1:
            raise ValueError(f"r must be an int >= 1, got {r!r}")
        wanted = set(range(len(self.scores)) if layers is None else check_layers(layers, len(self.scores)))
        return sum(r * (out + inp) for name, (out, inp) in self.module_shapes.items()
                   if self.block_of(name) in wanted)

    # -------------------------------------------------------------------------------------- files
    def to_dict(self):
        return {"format": _FORMAT, **dataclasses.asdict(self)}

    def to_json(self, path=None):
        """The JSON text; with `path`, also written there atomically."""
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        if path is not None:
            with atomic_write(path) as tmp:
                with open(tmp, "w", encoding="utf-8") as handle:
                    handle.write(text)
        return text

    @classmethod
    def from_json(cls, path_or_str):
        """Scores from a JSON file path or a JSON string (as `to_json` writes)."""
        source = "JSON text"
        if isinstance(path_or_str, os.PathLike) or (isinstance(path_or_str, str)
                                                    and not path_or_str.lstrip().startswith("{")):
            source = os.fspath(path_or_str)
            if os.path.isdir(source):
                raise IsADirectoryError(f"{source} is a directory; expected a scores JSON file")
            if not os.path.isfile(source):
                raise FileNotFoundError(f"scores file not found: {source}")
            try:
                with open(source, encoding="utf-8") as handle:
                    path_or_str = handle.read()
            except UnicodeDecodeError as err:
                raise ValueError(f"{source}: not UTF-8 text ({err})") from None
        if not isinstance(path_or_str, str):
            raise TypeError(f"from_json takes a path or a JSON string, got {type(path_or_str).__name__}")
        try:
            data = json.loads(path_or_str)
        except json.JSONDecodeError as err:
            raise ValueError(f"{source}: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
        if not isinstance(data, dict) or "scores" not in data:
            raise ValueError(f"{source}: not a LayerScores file (expected an object with a 'scores' list)")
        if data.pop("format", _FORMAT) != _FORMAT:
            raise ValueError(f"{source}: format is not {_FORMAT!r}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise ValueError(f"{source}: unknown field(s) {unknown}")
        try:
            return cls(**data)
        except (TypeError, ValueError) as err:
            raise type(err)(f"{source}: {err}") from None

    def plot(self, path):
        """A PNG: per-block importance bars and the cumulative-importance curve over the ranking."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        n, order = len(self.scores), self.ranking()
        total = sum(self.scores)
        fig = Figure(figsize=(10, 4), tight_layout=True)
        FigureCanvasAgg(fig)
        bars, curve = fig.subplots(1, 2)
        bars.bar(range(n), self.scores, color="tab:blue")
        bars.set(xlabel="block", ylabel=self.metric, title=f"per-block importance ({self.metric})")
        bars.set_xticks(range(n))
        shares, running = [], 0.0
        for index in order:
            running += self.scores[index]
            shares.append(running / total if total else float("nan"))
        curve.plot(range(1, n + 1), shares, marker="o", color="tab:orange")
        curve.set_xticks(range(1, n + 1), [f"{k}\n(+{order[k - 1]})" for k in range(1, n + 1)], fontsize=7)
        curve.set(xlabel="top-k blocks (+ block added)", ylabel="cumulative share of importance",
                  ylim=(0, 1.02), title="cumulative importance")
        curve.grid(alpha=0.3)
        with atomic_write(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110)


# ---------------------------------------------------------------------------------------------- helpers
def _check_common(model, metric, max_batches, progress, metrics):
    model = unwrap_model(model)
    if metric not in metrics:
        raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(metrics)}")
    if max_batches is not None and (isinstance(max_batches, bool) or not isinstance(max_batches, int)
                                    or max_batches < 1):
        raise ValueError(f"max_batches must be a positive int or None, got {max_batches!r}")
    if not isinstance(progress, bool):
        raise TypeError(f"progress must be a bool, got {type(progress).__name__}")
    return model


def _iterate(batches, max_batches, progress, desc):
    if isinstance(batches, (Mapping, torch.Tensor, str)) or not hasattr(batches, "__iter__"):
        raise TypeError("batches must be an iterable of dicts of tensors (a list or a DataLoader), got "
                        f"{type(batches).__name__}; wrap a single batch in a list")
    total = len(batches) if hasattr(batches, "__len__") else None
    if max_batches is not None:
        total = max_batches if total is None else min(total, max_batches)
    rank = torch.distributed.get_rank() if _distributed() else 0
    for index, batch in enumerate(tqdm(batches, total=total, desc=desc, disable=not progress or rank != 0)):
        if max_batches is not None and index >= max_batches:
            break
        yield batch


def _distributed():
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _all_reduce(tensor):
    if _distributed() and torch.distributed.get_world_size() > 1:
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
    return tensor


def _device(model):
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


def _model_inputs(model, batch):
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
    device = _device(model)
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


def _token_mask(inputs):
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


def _align_mask(mask, lead_shape):
    """The token mask in the shape of an activation's token dims.

    Activations that are not one row per token (DeBERTa's relative-position embeddings through key_proj)
    are not token activations and get an all-False mask; unpadded activations (only the real tokens) get
    an all-True one.
    """
    if mask is None:
        return None
    if tuple(mask.shape) == tuple(lead_shape):
        return mask
    if len(lead_shape) == 1:  # tokens flattened to one dim: all of them, or only the real ones
        if mask.numel() == lead_shape[0]:
            return mask.reshape(lead_shape)
        if int(mask.sum()) == lead_shape[0]:
            return torch.ones(lead_shape, dtype=torch.bool, device=mask.device)
    return torch.zeros(lead_shape, dtype=torch.bool, device=mask.device)


@contextlib.contextmanager
def _frozen_eval(model):
    """eval mode and the given requires_grad flags for the duration; every module's flags restored."""
    modes = {module: module.training for module in model.modules()}
    flags = {param: param.requires_grad for param in model.parameters()}
    model.eval()
    try:
        yield
    finally:
        for module, training in modes.items():
            module.training = training
        for param, flag in flags.items():
            param.requires_grad_(flag)


@contextlib.contextmanager
def _probes(model, modules, current_mask):
    """Swap each targeted linear for a probe-mode FastActLoRALinear; put the originals back on exit.

    An already injected FastActLoRALinear is profiled in place (norm tracking on, its stats restored).
    ``current_mask`` is a one-element list holding the running batch's token mask.
    """
    probes, swapped, hooks, restore = {}, [], [], []

    def set_mask(module, args):
        if args and isinstance(args[0], torch.Tensor):
            module.norm_token_mask = _align_mask(current_mask[0], args[0].shape[:-1])

    try:
        for name, module in modules.items():
            if isinstance(module, FastActLoRALinear):
                restore.append((module, module.track_norms, module.norm_token_mask,
                                module.norm_stat_tensor().clone()))
                module.track_norms = True
                module.reset_norm_stats()
                probe = module
            else:
                probe = FastActLoRALinear(as_linear(module), r=0, probe=True)
                replace_module(model, name, probe)
                swapped.append((name, module))
            hooks.append(probe.register_forward_pre_hook(set_mask))
            probes[name] = probe
        yield probes
    finally:
        for hook in hooks:
            hook.remove()
        for name, module in reversed(swapped):
            replace_module(model, name, module)
        for module, track, mask, sums in restore:
            module.track_norms, module.norm_token_mask = track, mask
            module.norm_stat_tensor().copy_(sums)


def _block_output_hooks(blocks, sums, current_mask):
    def make_hook(index):
        def hook(module, args, output):
            hidden = output[0] if isinstance(output, (tuple, list)) else output
            if isinstance(hidden, Mapping):
                hidden = next(iter(hidden.values()))
            if not isinstance(hidden, torch.Tensor):
                raise TypeError(f"block {index} returned {type(hidden).__name__}, expected a hidden-state tensor")
            rowsq = hidden.detach().double().square().sum(-1)
            mask = _align_mask(current_mask[0], rowsq.shape)
            keep = torch.ones_like(rowsq) if mask is None else mask.to(rowsq.dtype)
            sums[index] += torch.stack([(rowsq * keep).sum(), (rowsq.sqrt() * keep).sum(), keep.sum()]).to(sums.device)
        return hook
    return [block.register_forward_hook(make_hook(i)) for i, block in enumerate(blocks)]


def _check_block_targets(targets):
    empty = [i for i, modules in targets.items() if not modules]
    if empty:
        raise ValueError(f"block(s) {empty} hold no module matching target_modules; every block needs at "
                         "least one to be scored (choose target_modules that cover all blocks)")


def _meta(model, target_modules):
    name = getattr(getattr(model, "config", None), "_name_or_path", None)
    return {"model": name or type(model).__name__,
            "target_modules": target_modules if target_modules is not None else "default",
            "world_size": torch.distributed.get_world_size() if _distributed() else 1}


# ---------------------------------------------------------------------------------------------- profilers
def profile_activations(model, batches, *, target_modules=None, metric="input_norm", max_batches=None,
                        progress=True, blocks=None):
    """Score each block by the norm of its activations over calibration `batches`.

    Metrics (every mean is over real tokens t, padding excluded):
    - ``input_norm``: per module, mean_t ‖x_t‖₂ of the targeted linear's input; a block's score is the mean
      over its targeted modules (the paper's score);
    - ``input_rms``: per module, sqrt(Σ_t ‖x_t‖² / (T · in_features)), comparable across widths;
    - ``block_output``: mean_t ‖h_t‖₂ of the block's output hidden state.

    `batches` are dicts of tensors as a tokenizer or DataLoader gives them; only the keys the model's forward
    takes are passed (labels are ignored). The model runs in eval mode without grad; afterwards it has the
    same modules, flags and outputs as before.
    """
    model = _check_common(model, metric, max_batches, progress, METRICS)
    stack = find_blocks(model, blocks)
    targets = target_linears(model, target_modules, stack.path)
    if metric != "block_output":
        _check_block_targets(targets)
    flat = {name: module for i in range(len(stack)) for name, module in targets[i].items()}
    device = _device(model)
    current_mask = [None]
    block_sums = torch.zeros(len(stack), 3, dtype=torch.float64, device=device)
    extra = torch.zeros(2, dtype=torch.float64, device=device)  # real tokens, batches

    with _frozen_eval(model), torch.no_grad(), contextlib.ExitStack() as stack_ctx:
        if metric == "block_output":
            for hook in _block_output_hooks(stack.blocks, block_sums, current_mask):
                stack_ctx.callback(hook.remove)
            probes = {}
        else:
            probes = stack_ctx.enter_context(_probes(model, flat, current_mask))
        for batch in _iterate(batches, max_batches, progress, f"profiling {metric}"):
            inputs = _model_inputs(model, batch)
            current_mask[0] = _token_mask(inputs)
            model(**inputs)
            tokens = current_mask[0].sum() if current_mask[0] is not None else 0
            extra += torch.tensor([float(tokens), 1.0], dtype=torch.float64, device=device)
        module_sums = (torch.stack([probes[name].norm_stat_tensor().to(device) for name in flat]).clone()
                       if probes else torch.zeros(0, 3, dtype=torch.float64, device=device))

    # One collective for everything, so ranks agree and no rank can deadlock on a per-module call.
    reduced = _all_reduce(torch.cat([module_sums.flatten(), block_sums.flatten(), extra])).cpu()
    module_sums = reduced[:module_sums.numel()].view(-1, 3)
    block_sums = reduced[module_sums.numel():module_sums.numel() + block_sums.numel()].view(-1, 3)
    num_tokens, num_batches = int(reduced[-2]), int(reduced[-1])
    if num_batches == 0:
        raise ValueError("no calibration batches: batches was empty")

    module_scores = {}
    if metric == "block_output":
        if (block_sums[:, 2] == 0).any():
            raise ValueError("no real tokens reached the blocks (is the attention mask all zeros?)")
        scores = (block_sums[:, 1] / block_sums[:, 2]).tolist()
        module_scores = {f"{stack.path}.{i}": s for i, s in enumerate(scores)}
    else:
        unseen = [name for name, sums in zip(flat, module_sums) if sums[2] == 0]
        if unseen:
            raise ValueError(f"module(s) {unseen[:5]} saw no real token: they were not called on the "
                             "calibration tokens (or every attention-mask entry was 0)")
        for (name, module), (sum_sq, sum_norm, count) in zip(flat.items(), module_sums.tolist()):
            in_features = linear_shape(module)[1]
            module_scores[name] = (sum_norm / count if metric == "input_norm"
                                   else math.sqrt(sum_sq / (count * in_features)))
        scores = [sum(module_scores[n] for n in targets[i]) / len(targets[i]) for i in range(len(stack))]
    return LayerScores(scores=scores, module_scores=module_scores, metric=metric, block_path=stack.path,
                       layers_pattern=stack.layers_pattern,
                       module_shapes={n: list(linear_shape(m)) for n, m in flat.items()},
                       num_tokens=num_tokens, num_batches=num_batches, meta=_meta(model, target_modules))


def _target_weight(module):
    if isinstance(module, FastActLoRALinear):
        return module.base_layer.weight
    return module.weight


@contextlib.contextmanager
def _seeded_head(model, seed):
    """Re-draw the task head's linears from `seed` (N(0, initializer_range²), zero bias); restored on exit."""
    heads = [module for name, module in model.named_children() if name in HEAD_NAMES]
    saved = [{k: v.detach().clone() for k, v in head.state_dict().items()} for head in heads]
    std = float(getattr(getattr(model, "config", None), "initializer_range", 0.02))
    generator = torch.Generator().manual_seed(seed)
    try:
        with torch.no_grad():
            for head in heads:
                for sub in head.modules():
                    if isinstance(sub, nn.Linear) or is_conv1d(sub):
                        weight = torch.randn(sub.weight.shape, generator=generator, dtype=torch.float32) * std
                        sub.weight.copy_(weight)
                        if sub.bias is not None:
                            sub.bias.zero_()
        yield heads
    finally:
        with torch.no_grad():
            for head, state in zip(heads, saved):
                head.load_state_dict(state)


def _loss(output):
    loss = getattr(output, "loss", None)
    if loss is None and isinstance(output, Mapping):
        loss = output.get("loss")
    if loss is None and isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor) \
            and output[0].dim() == 0:
        loss = output[0]
    if loss is None:
        raise ValueError("the model returned no loss: profile_gradients needs a model with a task head "
                         "(e.g. AutoModelForSequenceClassification) and labels in every batch")
    return loss


def _check_labels(model, labels, key):
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
            and any(name in HEAD_NAMES for name, _ in model.named_children()) and labels.numel()):
        bad = labels[(labels != -100) & ((labels < 0) | (labels >= num_labels))]
        if bad.numel():
            raise ValueError(f"batch[{key!r}] holds class {int(bad[0])}, but the model has num_labels={num_labels} "
                             f"(classes 0..{num_labels - 1})")
    return labels


def profile_gradients(model, batches, *, seed=0, target_modules=None, max_batches=None, progress=True,
                      blocks=None):
    """The gradient-guided baseline: score blocks by the norm of the loss gradient w.r.t. their weights.

    For batch b with loss L_b (the model's own loss, mean over the batch) and block l with targeted weights
    W_{l,1..M}:

        g_{l,b} = sqrt( Σ_m ‖∂L_b / ∂W_{l,m}‖_F² ),      score_l = (1/B) Σ_b g_{l,b}

    and per module, module_score_{l,m} = (1/B) Σ_b ‖∂L_b / ∂W_{l,m}‖_F. Under torch.distributed, B counts the
    batches of all ranks. The model runs in eval mode (no dropout). Its task head (a top-level ``classifier``,
    ``score`` or ``qa_outputs``) is re-drawn from `seed` as N(0, initializer_range²) weights and zero bias
    for the run, so the baseline does not depend on whatever head the model was loaded with; a model
    without one (a causal LM) is used as is. Every batch needs ``labels`` (or ``label``). Afterwards the
    model's weights, flags and modes are as before, and no ``.grad`` is touched.
    """
    model = _check_common(model, GRADIENT_METRIC, max_batches, progress, (GRADIENT_METRIC,))
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r}")
    stack = find_blocks(model, blocks)
    targets = target_linears(model, target_modules, stack.path)
    _check_block_targets(targets)
    names = [name for i in range(len(stack)) for name in targets[i]]
    weights = [_target_weight(targets[i][name]) for i in range(len(stack)) for name in targets[i]]
    block_of = [i for i in range(len(stack)) for _ in targets[i]]
    if "labels" not in inspect.signature(model.forward).parameters:
        raise ValueError(f"{type(model).__name__}.forward takes no labels: profile_gradients needs a model "
                         "with a task head (e.g. AutoModelForSequenceClassification)")
    device = _device(model)
    module_sums = torch.zeros(len(weights), dtype=torch.float64, device=device)
    block_sums = torch.zeros(len(stack), dtype=torch.float64, device=device)
    extra = torch.zeros(2, dtype=torch.float64, device=device)  # real tokens, batches

    with _frozen_eval(model), _seeded_head(model, seed), torch.enable_grad():
        for param in model.parameters():
            param.requires_grad_(False)
        for weight in weights:
            weight.requires_grad_(True)
        for batch in _iterate(batches, max_batches, progress, "profiling gradients"):
            inputs = _model_inputs(model, batch)
            label_key = next((k for k in LABEL_KEYS if k in batch), None)
            if label_key is None:
                raise ValueError(f"profile_gradients needs labels: batch keys are {sorted(batch)}, with no "
                                 "'labels' or 'label'")
            labels = _check_labels(model, batch[label_key], label_key).to(device)
            loss = _loss(model(**inputs, labels=labels))
            grads = torch.autograd.grad(loss, weights, allow_unused=True)
            sq = torch.stack([g.detach().double().square().sum() if g is not None
                              else torch.zeros((), dtype=torch.float64, device=device) for g in grads])
            module_sums += sq.sqrt()
            block_sums += torch.zeros_like(block_sums).index_add_(0, torch.tensor(block_of, device=device), sq).sqrt()
            mask = _token_mask(inputs)
            extra += torch.tensor([float(mask.sum()) if mask is not None else 0.0, 1.0], dtype=torch.float64,
                                  device=device)

    reduced = _all_reduce(torch.cat([module_sums, block_sums, extra])).cpu()
    num_batches = int(reduced[-1])
    if num_batches == 0:
        raise ValueError("no calibration batches: batches was empty")
    module_scores = dict(zip(names, (reduced[:len(names)] / num_batches).tolist()))
    scores = (reduced[len(names):len(names) + len(stack)] / num_batches).tolist()
    shapes = {name: list(linear_shape(targets[i][name])) for i in range(len(stack)) for name in targets[i]}
    meta = {**_meta(model, target_modules), "seed": seed}
    return LayerScores(scores=scores, module_scores=module_scores, metric=GRADIENT_METRIC, block_path=stack.path,
                       layers_pattern=stack.layers_pattern, module_shapes=shapes, num_tokens=int(reduced[-2]),
                       num_batches=num_batches, meta=meta)
