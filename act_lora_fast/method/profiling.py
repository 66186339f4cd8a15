"""Act-LoRA's layer importance: activation profiling (the method) and gradient profiling (the baseline).

`profile_activations` runs the frozen model over a few calibration batches with every targeted linear swapped
for a probe-mode FastActLoRALinear, so each block's input-norm statistics come out of the fused kernel's
reduction. The original module objects are put back afterwards, even on error: the model is left exactly
as it was. Padding tokens (``attention_mask == 0``) never count, so batching does not change the scores.
Under torch.distributed the raw sums and counts are all-reduced, so every rank gets identical scores.
"""
import contextlib
import inspect
import math
from collections.abc import Mapping

import torch
from torch import nn

from .. import _dist
from .._checks import check_bool, check_choice, check_int, check_positive
from ..layer import FastActLoRALinear
from ..model.anatomy import (as_linear, find_blocks, is_conv1d, linear_shape, replace_module, target_linears,
                             unwrap_model)
from ..model.hf import TASK_HEADS
from .batches import align_mask, batch_labels, iterate, model_device, model_inputs, token_mask
from .scores import LayerScores

METRICS = ("input_norm", "input_rms", "block_output")
GRADIENT_METRIC = "gradient_norm"
UPDATE_METRIC = "update"          # Σ_t ‖x_t‖·‖dy_t‖ per module, from the layer's backward (profile_updates)
HEAD_WARMUP_LR = 1e-3


# ---------------------------------------------------------------------------------------------- helpers
def _check_common(model, metric, max_batches, progress, metrics):
    model = unwrap_model(model)
    check_choice("metric", metric, metrics)
    check_int("max_batches", max_batches, 1, optional=True)
    check_bool("progress", progress)
    return model


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
def _probes(model, modules, current_mask, *, track_update=False):
    """Swap each targeted linear for a probe-mode FastActLoRALinear; put the originals back on exit.

    An already injected FastActLoRALinear is profiled in place (norm tracking on, its stats restored).
    ``current_mask`` is a one-element list holding the running batch's token mask. With `track_update` the
    probes also reduce the update score Σ_t ‖x_t‖·‖dy_t‖ in every backward.
    """
    probes, swapped, hooks, restore = {}, [], [], []

    def set_mask(module, args):
        if args and isinstance(args[0], torch.Tensor):
            module.norm_token_mask = align_mask(current_mask[0], args[0].shape[:-1])

    try:
        for name, module in modules.items():
            if isinstance(module, FastActLoRALinear):
                restore.append((module, module.track_norms, module.track_update, module.norm_token_mask,
                                module.norm_stat_tensor().clone(), module.update_stat_tensor().clone()))
                module.track_norms, module.track_update = True, track_update or module.track_update
                module.reset_norm_stats()
                probe = module
            else:
                probe = FastActLoRALinear(as_linear(module), r=0, probe=True, track_update=track_update)
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
        for module, track, track_update_before, mask, sums, update_sums in restore:
            module.track_norms, module.track_update, module.norm_token_mask = track, track_update_before, mask
            module.norm_stat_tensor().copy_(sums)
            module.update_stat_tensor().copy_(update_sums)


def _block_output_hooks(blocks, sums, current_mask):
    def make_hook(index):
        def hook(module, args, output):
            hidden = output[0] if isinstance(output, (tuple, list)) else output
            if isinstance(hidden, Mapping):
                hidden = next(iter(hidden.values()))
            if not isinstance(hidden, torch.Tensor):
                raise TypeError(f"block {index} returned {type(hidden).__name__}, expected a hidden-state tensor")
            rowsq = hidden.detach().double().square().sum(-1)
            mask = align_mask(current_mask[0], rowsq.shape)
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
            "world_size": _dist.world_size()}


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

    ``metric="update"`` is the fused update score Σ_t ‖x_t‖·‖dy_t‖ (see `profile_updates`, which it calls
    with the default head; the batches then need labels).
    """
    if metric == UPDATE_METRIC:
        return profile_updates(model, batches, target_modules=target_modules, max_batches=max_batches,
                               progress=progress, blocks=blocks)
    model = _check_common(model, metric, max_batches, progress, METRICS)
    stack = find_blocks(model, blocks)
    targets = target_linears(model, target_modules, stack.path)
    if metric != "block_output":
        _check_block_targets(targets)
    flat = {name: module for i in range(len(stack)) for name, module in targets[i].items()}
    device = model_device(model)
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
        for batch in iterate(batches, max_batches, progress, f"profiling {metric}"):
            inputs = model_inputs(model, batch)
            current_mask[0] = token_mask(inputs)
            model(**inputs)
            tokens = current_mask[0].sum() if current_mask[0] is not None else 0
            extra += torch.tensor([float(tokens), 1.0], dtype=torch.float64, device=device)
        module_sums = (torch.stack([probes[name].norm_stat_tensor().to(device) for name in flat]).clone()
                       if probes else torch.zeros(0, 3, dtype=torch.float64, device=device))

    # One collective for everything, so ranks agree and no rank can deadlock on a per-module call.
    reduced = _dist.all_reduce_sum(torch.cat([module_sums.flatten(), block_sums.flatten(), extra])).cpu()
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
    heads = [module for name, module in model.named_children() if name in TASK_HEADS]
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


def _warm_up_head(model, heads, batches, steps, lr, device):
    """Train only the task head's parameters for `steps` AdamW steps on `batches` (cycled), body frozen.

    The gradient baseline then scores the blocks with a head that has learnt something about the task,
    as a real fine-tuning run's first steps would, rather than with a random head (whose gradients favour
    the top blocks whatever the task). The caller restores the head afterwards.
    """
    params = [p for head in heads for p in head.parameters()]
    if steps == 0 or not params:
        return
    for param in model.parameters():
        param.requires_grad_(False)
    for param in params:
        param.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    for step in range(steps):
        batch = batches[step % len(batches)]
        inputs = model_inputs(model, batch)
        labels = batch_labels(model, batch, device, needed_by="the head warm-up")
        loss = _loss(model(**inputs, labels=labels))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    for param in params:
        param.requires_grad_(False)
        param.grad = None


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


def _loss_profile_targets(model, seed, head_warmup_steps, head_warmup_lr, target_modules, blocks):
    """The checks and the (blocks, targets) shared by the profiles that run the model's loss backward."""
    check_int("seed", seed)
    check_int("head_warmup_steps", head_warmup_steps, 0)
    check_positive("head_warmup_lr", head_warmup_lr)
    stack = find_blocks(model, blocks)
    targets = target_linears(model, target_modules, stack.path)
    _check_block_targets(targets)
    return stack, targets


def profile_gradients(model, batches, *, seed=0, target_modules=None, max_batches=None, progress=True,
                      blocks=None, head_warmup_steps=0, head_warmup_lr=HEAD_WARMUP_LR):
    """The gradient-guided baseline: score blocks by the norm of the loss gradient w.r.t. their weights.

    For batch b with loss L_b (the model's own loss, mean over the batch) and block l with targeted weights
    W_{l,1..M}:

        g_{l,b} = sqrt( Σ_m ‖∂L_b / ∂W_{l,m}‖_F² ),      score_l = (1/B) Σ_b g_{l,b}

    and per module, module_score_{l,m} = (1/B) Σ_b ‖∂L_b / ∂W_{l,m}‖_F. Under torch.distributed, B counts the
    batches of all ranks. The model runs in eval mode (no dropout). Its task head (a top-level ``classifier``,
    ``score`` or ``qa_outputs``) is re-drawn from `seed` as N(0, initializer_range²) weights and zero bias
    for the run, so the baseline does not depend on whatever head the model was loaded with; a model
    without one (a causal LM) is used as is. With ``head_warmup_steps`` > 0 that head is first trained alone
    (body frozen, AdamW at ``head_warmup_lr``) for that many steps on the calibration batches, cycled: the
    paper's gradient-guided importance, not the ranking a random head gives (which favours the top blocks).
    Every batch needs ``labels`` (or ``label``). Afterwards the model's weights, flags and modes are as
    before, and no ``.grad`` is touched.
    """
    model = _check_common(model, GRADIENT_METRIC, max_batches, progress, (GRADIENT_METRIC,))
    stack, targets = _loss_profile_targets(model, seed, head_warmup_steps, head_warmup_lr, target_modules, blocks)
    names = [name for i in range(len(stack)) for name in targets[i]]
    weights = [_target_weight(targets[i][name]) for i in range(len(stack)) for name in targets[i]]
    block_of = [i for i in range(len(stack)) for _ in targets[i]]
    if "labels" not in inspect.signature(model.forward).parameters:
        raise ValueError(f"{type(model).__name__}.forward takes no labels: profile_gradients needs a model "
                         "with a task head (e.g. AutoModelForSequenceClassification)")
    device = model_device(model)
    module_sums = torch.zeros(len(weights), dtype=torch.float64, device=device)
    block_sums = torch.zeros(len(stack), dtype=torch.float64, device=device)
    extra = torch.zeros(2, dtype=torch.float64, device=device)  # real tokens, batches

    if head_warmup_steps:
        batches = list(batches)  # iterated twice: the warm-up, then the scoring
        if not batches:
            raise ValueError("no calibration batches: batches was empty")
    with _frozen_eval(model), _seeded_head(model, seed) as heads, torch.enable_grad():
        _warm_up_head(model, heads, batches, head_warmup_steps, head_warmup_lr, device)
        for param in model.parameters():
            param.requires_grad_(False)
        for weight in weights:
            weight.requires_grad_(True)
        for batch in iterate(batches, max_batches, progress, "profiling gradients"):
            inputs = model_inputs(model, batch)
            labels = batch_labels(model, batch, device, needed_by="profile_gradients")
            loss = _loss(model(**inputs, labels=labels))
            grads = torch.autograd.grad(loss, weights, allow_unused=True)
            sq = torch.stack([g.detach().double().square().sum() if g is not None
                              else torch.zeros((), dtype=torch.float64, device=device) for g in grads])
            module_sums += sq.sqrt()
            block_sums += torch.zeros_like(block_sums).index_add_(0, torch.tensor(block_of, device=device), sq).sqrt()
            mask = token_mask(inputs)
            extra += torch.tensor([float(mask.sum()) if mask is not None else 0.0, 1.0], dtype=torch.float64,
                                  device=device)

    reduced = _dist.all_reduce_sum(torch.cat([module_sums, block_sums, extra])).cpu()
    num_batches = int(reduced[-1])
    if num_batches == 0:
        raise ValueError("no calibration batches: batches was empty")
    module_scores = dict(zip(names, (reduced[:len(names)] / num_batches).tolist()))
    scores = (reduced[len(names):len(names) + len(stack)] / num_batches).tolist()
    shapes = {name: list(linear_shape(targets[i][name])) for i in range(len(stack)) for name in targets[i]}
    meta = {**_meta(model, target_modules), "seed": seed, "head_warmup_steps": head_warmup_steps}
    return LayerScores(scores=scores, module_scores=module_scores, metric=GRADIENT_METRIC, block_path=stack.path,
                       layers_pattern=stack.layers_pattern, module_shapes=shapes, num_tokens=int(reduced[-2]),
                       num_batches=num_batches, meta=meta)


# ---------------------------------------------------------------------------------------------- update score
def _block_input_needs_grad(module, args, kwargs):
    """Make the lowest block's hidden-state input require grad, so backward runs through every block."""
    if args and isinstance(args[0], torch.Tensor):
        return (args[0].detach().requires_grad_(),) + tuple(args[1:]), kwargs
    if isinstance(kwargs.get("hidden_states"), torch.Tensor):
        return args, {**kwargs, "hidden_states": kwargs["hidden_states"].detach().requires_grad_()}
    raise TypeError(f"{type(module).__name__} got no hidden-state tensor to start the backward from")


def profile_updates(model, batches, *, seed=0, target_modules=None, max_batches=None, progress=True, blocks=None,
                    head_warmup_steps=0, head_warmup_lr=HEAD_WARMUP_LR):
    """The fused update score (``metric="update"``): per module, (1/T) Σ_t ‖x_t‖·‖dy_t‖ over real tokens t.

    A LoRA layer's first update scales with it: at B = 0, ∂L/∂B = s·dyᵀ(x Aᵀ), so token t contributes in
    proportion to ‖x_t‖·‖dy_t‖; the activation score keeps ‖x_t‖ only. Each targeted linear is swapped for a
    probe-mode FastActLoRALinear whose backward reduces ‖dy_t‖ from the dy it reads anyway (the layer's
    ``norm_stats()['sum_update']``), so a few calibration forward + backward passes give the scores. The loss
    is the model's own (labels needed), with the task head drawn from `seed` and optionally warmed up first,
    as in `profile_gradients`. A block's score is the mean over its modules. The model is restored exactly.

    """
    model = _check_common(model, UPDATE_METRIC, max_batches, progress, (UPDATE_METRIC,))
    stack, targets = _loss_profile_targets(model, seed, head_warmup_steps, head_warmup_lr, target_modules, blocks)
    if "labels" not in inspect.signature(model.forward).parameters:
        raise ValueError(f"{type(model).__name__}.forward takes no labels: the update score needs a model "
                         "with a task head (e.g. AutoModelForSequenceClassification)")
    flat = {name: module for i in range(len(stack)) for name, module in targets[i].items()}
    device = model_device(model)
    current_mask = [None]
    extra = torch.zeros(2, dtype=torch.float64, device=device)  # real tokens, batches
    batches = list(batches)
    if not batches:
        raise ValueError("no calibration batches: batches was empty")

    with _frozen_eval(model), _seeded_head(model, seed) as heads, torch.enable_grad(), \
            contextlib.ExitStack() as stack_ctx:
        _warm_up_head(model, heads, batches, head_warmup_steps, head_warmup_lr, device)
        for param in model.parameters():
            param.requires_grad_(False)
        probes = stack_ctx.enter_context(_probes(model, flat, current_mask, track_update=True))
        hook = stack.blocks[0].register_forward_pre_hook(_block_input_needs_grad, with_kwargs=True)
        stack_ctx.callback(hook.remove)
        for batch in iterate(batches, max_batches, progress, "profiling update scores"):
            inputs = model_inputs(model, batch)
            labels = batch_labels(model, batch, device, needed_by="the update score")
            current_mask[0] = token_mask(inputs)
            _loss(model(**inputs, labels=labels)).backward()
            tokens = current_mask[0].sum() if current_mask[0] is not None else 0
            extra += torch.tensor([float(tokens), 1.0], dtype=torch.float64, device=device)
        stats = [probes[name].norm_stats() for name in flat]
        sums = torch.tensor([[s["sum_update"], s["update_count"]] for s in stats], dtype=torch.float64,
                            device=device)

    reduced = _dist.all_reduce_sum(torch.cat([sums.flatten(), extra])).cpu()
    sums = reduced[:sums.numel()].view(-1, 2)
    if int(reduced[-1]) == 0:
        raise ValueError("no calibration batches: batches was empty")
    unseen = [name for name, (_, count) in zip(flat, sums.tolist()) if count == 0]
    if unseen:
        raise ValueError(f"module(s) {unseen[:5]} saw no real token on the calibration batches")
    module_scores = {name: total / count for name, (total, count) in zip(flat, sums.tolist())}
    scores = [sum(module_scores[n] for n in targets[i]) / len(targets[i]) for i in range(len(stack))]
    meta = {**_meta(model, target_modules), "seed": seed, "head_warmup_steps": head_warmup_steps}
    return LayerScores(scores=scores, module_scores=module_scores, metric=UPDATE_METRIC, block_path=stack.path,
                       layers_pattern=stack.layers_pattern,
                       module_shapes={n: list(linear_shape(m)) for n, m in flat.items()},
                       num_tokens=int(reduced[-2]), num_batches=int(reduced[-1]), meta=meta)
