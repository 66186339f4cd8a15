"""FastActLoRALinear: a LoRA linear on a fused op that also measures its input's activation norms.

State-dict keys (same names as PEFT's lora.Linear, minus PEFT's adapter-name level):
``base_layer.weight``, ``base_layer.bias`` (if any), ``lora_A.weight`` (r × in), ``lora_B.weight`` (out × r).
A merged layer adds ``lora_merged`` (a bool tensor): its base weight already holds s·B·A, and a layer that
loads that state dict becomes merged too, so the round trip is exact instead of applying LoRA twice.
"""
import contextlib
import math

import torch
from torch import nn

from ._dist import is_dtensor
from .functional import check_backend_name, lora_linear, new_dropout_seed

NORM_SUM_SQ, NORM_SUM, NORM_COUNT = 0, 1, 2
UPDATE_SUM, UPDATE_COUNT = 0, 1
MERGED_KEY = "lora_merged"


class FastActLoRALinear(nn.Module):
    """y = base(x) + s·B·A·drop(x), fused, with optional per-module activation-norm statistics.

    Args:
        base: the ``nn.Linear`` to wrap. Its weight is used in place (not copied) and frozen.
        r: LoRA rank (≥ 1). ``r=0`` is allowed only with ``probe=True``.
        alpha: LoRA alpha (> 0); ``scaling = alpha / r`` (``alpha / sqrt(r)`` with ``use_rslora``).
        dropout: dropout probability on the LoRA branch, in [0, 1). The keep mask is regenerated in
            backward from a per-call seed, never stored.
        use_rslora: rank-stabilised scaling.
        track_norms: accumulate Σ‖x_t‖², Σ‖x_t‖ and the token count of every forward (see `norm_stats`).
        track_update: accumulate the "update" score Σ_t ‖x_t‖·‖dy_t‖ and its token count in every backward
            of a forward run with grad enabled (see `norm_stats`); works in probe mode (r=0) too, where the
            backward runs even if nothing else in the model needs a gradient.
        backend: ``"auto"``, ``"triton"``, ``"torch"`` or ``"reference"`` (see `act_lora_fast.functional`).
        probe: probe mode: adapter off, norms on; the frozen linear plus the fused norm reduction only.

    LoRA weights take the base weight's dtype and device. Inputs must have the weight's dtype, except under
    ``torch.autocast``, where input, weights and adapter are cast to the autocast dtype as ``nn.Linear`` is.
    Set ``norm_token_mask`` (bool, shape ``x.shape[:-1]``) to exclude tokens (padding) from the statistics
    (both the norms and the update score). The statistics stay float64 on the module's device whatever
    ``.to(dtype)`` / ``.half()`` does to the weights.
    """

    def __init__(self, base, r=8, alpha=16, dropout=0.0, *, use_rslora=False, track_norms=False,
                 backend="auto", probe=False, track_update=False):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"base must be a torch.nn.Linear, got {type(base).__name__}")
        if isinstance(r, bool) or not isinstance(r, int):
            raise TypeError(f"r must be an int, got {type(r).__name__}")
        if r < 0 or (r == 0 and not probe):
            raise ValueError(f"r must be >= 1 (r=0 only in probe mode), got r={r}")
        if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not 0 < alpha < math.inf:
            raise ValueError(f"alpha must be a positive finite number, got {alpha!r}")
        if not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        check_backend_name(backend)

        self.base_layer = base
        base.weight.requires_grad_(False)
        if base.bias is not None:
            base.bias.requires_grad_(False)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.r, self.lora_alpha, self.lora_dropout = r, alpha, float(dropout)
        self.use_rslora = use_rslora
        self.scaling = alpha / math.sqrt(r) if use_rslora and r else (alpha / r if r else 0.0)
        self.backend = backend
        self.track_norms, self.probe, self.track_update = track_norms, probe, track_update
        self.adapter_enabled, self.merged = True, False
        self.norm_token_mask = None

        if r > 0:
            factory = dict(device=base.weight.device, dtype=base.weight.dtype)
            self.lora_A = nn.Linear(self.in_features, r, bias=False, **factory)
            self.lora_B = nn.Linear(r, self.out_features, bias=False, **factory)
            self.reset_lora_parameters()
        else:
            self.lora_A = self.lora_B = None
        stats = dict(dtype=torch.float64, device=base.weight.device)
        self.register_buffer("_norm_sums", torch.zeros(3, **stats), persistent=False)
        self.register_buffer("_update_sums", torch.zeros(2, **stats), persistent=False)
        self.register_state_dict_post_hook(_save_merged_flag)
        self.register_load_state_dict_pre_hook(_load_merged_flag)

    def _apply(self, fn, recurse=True):
        # The statistics follow the module's device but never its dtype: fp16 sums overflow, bf16 counts drift.
        stats = {name: self._buffers.pop(name) for name in ("_norm_sums", "_update_sums")}
        try:
            super()._apply(fn, recurse)
        finally:
            for name, buf in stats.items():
                self._buffers[name] = buf.to(device=fn(buf[:0]).device)
        return self

    def reset_lora_parameters(self):
        """PEFT's init: A Kaiming-uniform, B zeros, so the adapter starts as the identity update."""
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    # ------------------------------------------------------------------ forward
    def _adapter_active(self):
        return self.lora_A is not None and self.adapter_enabled and not self.merged and not self.probe

    def forward(self, x):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
        # Parameters straight from the modules' dicts (each nn.Module.__getattr__ hop costs ~0.6 µs per call);
        # a parametrized weight (not in _parameters) falls back to the attribute.
        modules = self._modules
        base = modules["base_layer"]
        params = base._parameters
        weight = params.get("weight")
        if weight is None:
            weight = base.weight
        bias = params["bias"] if "bias" in params else base.bias
        if x.is_meta or weight.is_meta:
            raise ValueError("FastActLoRALinear got a tensor on the meta device (no data); load the model's "
                             "weights before running it")
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"input's last dim must be in_features={self.in_features}, got shape "
                             f"{tuple(x.shape)}")
        active = self.r > 0 and self.adapter_enabled and not self.merged and not self.probe
        lora_A = lora_B = None
        if active:
            lora_A = modules["lora_A"]._parameters.get("weight")
            lora_B = modules["lora_B"]._parameters.get("weight")
            if lora_A is None or lora_B is None:
                lora_A, lora_B = self.lora_A.weight, self.lora_B.weight
        device_type = "cpu" if x.is_cpu else ("cuda" if x.is_cuda else x.device.type)  # no torch.device built
        autocast_on = torch.is_autocast_enabled(device_type)
        if (autocast_on or x.dtype is not weight.dtype) and not x.is_floating_point():
            raise TypeError(f"input must be a floating-point tensor, got dtype {x.dtype}")
        if autocast_on:
            dtype = torch.get_autocast_dtype(device_type)
            x, weight, bias, lora_A, lora_B = (t if t is None else t.to(dtype)
                                               for t in (x, weight, bias, lora_A, lora_B))
        elif x.dtype is not weight.dtype:
            raise TypeError(f"input dtype {x.dtype} differs from the weight's {weight.dtype}; cast the input "
                            "or run under torch.autocast")

        want_norms = self.track_norms or self.probe
        sink = self._update_sink(x) if self.track_update and torch.is_grad_enabled() else None
        if not active and not want_norms and sink is None:
            return nn.functional.linear(x, weight, bias)
        mask = self.norm_token_mask
        if mask is not None and (want_norms or sink is not None):
            self._check_mask(mask, x.shape[:-1])
        dropout_on = active and self.training and self.lora_dropout > 0.0
        dropout_p, seed = (self.lora_dropout, new_dropout_seed()) if dropout_on else (0.0, 0)
        token_mask = mask.to(x.device) if sink is not None and mask is not None else None
        if autocast_on:  # already cast above; autocast must not cast the fused op's GEMMs again
            with torch.autocast(device_type, enabled=False):
                y, rowsq = lora_linear(x, weight, bias, lora_A, lora_B, self.scaling, dropout_p=dropout_p, seed=seed,
                                       backend=self.backend, compute_rowsq=want_norms, update_sink=sink,
                                       token_mask=token_mask)
        else:
            y, rowsq = lora_linear(x, weight, bias, lora_A, lora_B, self.scaling, dropout_p=dropout_p, seed=seed,
                                   backend=self.backend, compute_rowsq=want_norms, update_sink=sink,
                                   token_mask=token_mask)
        if want_norms:
            self._accumulate_norms(rowsq)
        return y

    def _update_sink(self, x):
        """A fresh leaf whose gradient is this call's update sums; its hook adds them to the accumulator."""
        sink = torch.zeros(2, dtype=torch.float64, device=x.device, requires_grad=True)
        sink.register_hook(self._accumulate_update)
        return sink

    @torch.no_grad()
    def _accumulate_update(self, sums):
        self._update_sums += sums.to(self._update_sums.device)

    # ------------------------------------------------------------------ norm statistics
    @staticmethod
    def _check_mask(mask, token_shape):
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise TypeError(f"norm_token_mask must be a bool tensor (True = count the token), got "
                            f"{getattr(mask, 'dtype', type(mask).__name__)}")
        if tuple(mask.shape) != tuple(token_shape):
            raise ValueError(f"norm_token_mask has shape {tuple(mask.shape)}, but the input's token "
                             f"dims are {tuple(token_shape)}")

    @torch.no_grad()
    def _accumulate_norms(self, rowsq):
        rowsq = rowsq.detach().double()
        mask = self.norm_token_mask
        if mask is None:
            sums = torch.stack([rowsq.sum(), rowsq.sqrt().sum(), rowsq.new_tensor(rowsq.numel())])
        else:
            keep = mask.to(device=rowsq.device, dtype=torch.float64)
            # Multiplying by the mask instead of boolean indexing keeps CUDA free of host syncs.
            sums = torch.stack([(rowsq * keep).sum(), (rowsq.sqrt() * keep).sum(), keep.sum()])
        self._norm_sums += sums

    def norm_stat_tensor(self):
        """The raw accumulators [Σ‖x‖², Σ‖x‖, count] as one float64 tensor (for all-reduce); indices
        NORM_SUM_SQ, NORM_SUM, NORM_COUNT."""
        return self._norm_sums

    def update_stat_tensor(self):
        """The raw update accumulators [Σ_t ‖x_t‖·‖dy_t‖, count] as one float64 tensor (for all-reduce);
        indices UPDATE_SUM, UPDATE_COUNT."""
        return self._update_sums

    def norm_stats(self):
        """Σ‖x_t‖², Σ‖x_t‖, token count, mean token norm and RMS of the input's entries; and the update score.

        ``rms`` = sqrt(Σ‖x_t‖² / (count · in_features)): comparable across modules of different widths.
        ``sum_update`` = Σ_t ‖x_t‖·‖dy_t‖ over the tokens of every backward since the last reset (with
        ``track_update``), ``update_count`` their number and ``mean_update`` = sum_update / update_count.
        """
        sum_sq, sum_norm, count = self._norm_sums.tolist()
        sum_update, update_count = self._update_sums.tolist()
        n = max(count, 1.0)
        return {
            "sum_sq_norm": sum_sq,
            "sum_norm": sum_norm,
            "count": int(count),
            "mean_norm": sum_norm / n,
            "rms": math.sqrt(sum_sq / (n * self.in_features)),
            "sum_update": sum_update,
            "update_count": int(update_count),
            "mean_update": sum_update / max(update_count, 1.0),
        }

    def reset_norm_stats(self):
        """Zero the norm and the update accumulators."""
        self._norm_sums.zero_()
        self._update_sums.zero_()

    # ------------------------------------------------------------------ adapter control
    @contextlib.contextmanager
    def disable_adapter(self):
        """Temporarily run the frozen base only (norm tracking, if on, continues)."""
        previous = self.adapter_enabled
        self.adapter_enabled = False
        try:
            yield self
        finally:
            self.adapter_enabled = previous

    @torch.no_grad()
    def _delta_weight(self):
        return (self.lora_B.weight.float() @ self.lora_A.weight.float()) * self.scaling

    def _check_unsharded(self, what):
        if any(is_dtensor(t) for t in (self.base_layer.weight, self.lora_A.weight, self.lora_B.weight)):
            raise RuntimeError(f"{what}() on an FSDP-sharded layer: its weights are shards (DTensors). Save the "
                               "adapter (act_lora_fast.train.distributed.save_sharded_adapter gathers it) and "
                               f"{what} on an unsharded model loaded with it")

    @torch.no_grad()
    def merge(self):
        """Fold s·B·A into the base weight; forward then skips the adapter."""
        if self.lora_A is None:
            raise RuntimeError("a probe-mode layer with r=0 has no adapter to merge")
        if self.merged:
            raise RuntimeError("adapter is already merged")
        self._check_unsharded("merge")
        weight = self.base_layer.weight
        weight.copy_((weight.float() + self._delta_weight()).to(weight.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self):
        """Subtract s·B·A from the base weight again."""
        if not self.merged:
            raise RuntimeError("adapter is not merged")
        self._check_unsharded("unmerge")
        weight = self.base_layer.weight
        weight.copy_((weight.float() - self._delta_weight()).to(weight.dtype))
        self.merged = False

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, "
                f"alpha={self.lora_alpha}, dropout={self.lora_dropout}, backend={self.backend!r}, "
                f"track_norms={self.track_norms}, track_update={self.track_update}, probe={self.probe}")


def _save_merged_flag(module, state_dict, prefix, local_metadata):
    if module.merged:
        state_dict[prefix + MERGED_KEY] = torch.tensor(True)


def _load_merged_flag(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                      error_msgs):
    """A state dict that holds the base weight decides whether this layer is merged: merged iff the flag
    is there. Without the base weight (an adapter-only dict) the flag would describe weights it lacks."""
    flag = state_dict.pop(prefix + MERGED_KEY, None)
    if prefix + "base_layer.weight" in state_dict:
        module.merged = bool(flag) if flag is not None else False
    elif flag is not None:
        error_msgs.append(f"{prefix}{MERGED_KEY} given without {prefix}base_layer.weight: the merged flag "
                          "describes a base weight this state dict does not hold")
