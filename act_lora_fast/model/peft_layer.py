"""Our fused LoRA op inside PEFT: a subclass of PEFT's own ``lora.Linear`` and the switches that make PEFT use it.

`FusedLoraLinear` *is* a ``peft.tuners.lora.Linear``: construction, state dict, adapter names, ``merge`` /
``unmerge``, ``disable_adapters``, ``set_adapter``, ``save_pretrained`` / ``from_pretrained``,
``merge_and_unload`` and ``requires_grad`` handling are PEFT's code. Only ``forward`` differs, and only when
PEFT's forward would compute exactly one plain LoRA adapter (see `FusedLoraLinear.fused_adapter`): then it
runs `act_lora_fast.functional.lora_linear` (the fused CPU op, Triton on CUDA). In every other case it calls
PEFT's forward, so the behaviour is PEFT's.

Three ways to get it:
- `patch_peft()` / `unpatch_peft()`: from then on PEFT builds a `FusedLoraLinear` wherever it would build a
  ``lora.Linear`` for an ``nn.Linear`` or a transformers ``Conv1D`` (quantized and other special layers keep
  PEFT's own dispatchers, which run first);
- ``with peft_patched(): ...``: the same for the block only;
- `fused_lora_config(config)`: no global patch; the one ``LoraConfig`` registers the fused layer through
  PEFT's (experimental) custom-module mapping. PEFT consults that mapping before its quantized-layer
  dispatchers, so use `patch_peft` for bitsandbytes / GPTQ / AWQ models.

LoRA dropout runs through our regenerated-mask op, not ``nn.Dropout``: the masks come from a per-call seed drawn
from torch's CPU generator, so the random stream differs from PEFT's (same distribution, other masks).
"""
import contextlib
import warnings

import torch
from peft.tuners.lora import layer as peft_lora_layer
from peft.tuners.lora import model as peft_lora_model
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from torch.nn.modules import module as torch_module

from .._dist import is_dtensor
from ..functional import lora_linear, new_dropout_seed

try:
    from transformers.pytorch_utils import Conv1D
except ImportError:  # transformers is optional for plain nn.Linear models
    Conv1D = None

# Under autocast only these dtypes are cast (autocast leaves float64 alone, so PEFT would too).
AUTOCAST_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _is_conv1d(module):
    return Conv1D is not None and isinstance(module, Conv1D)


def _runs_plainly(module):
    """True when calling `module` runs its class's forward and nothing else (no hooks, no replaced forward)."""
    return not (module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or module._backward_pre_hooks or "forward" in module.__dict__)


def _global_hooks_set():
    return bool(torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks
                or torch_module._global_backward_hooks or torch_module._global_backward_pre_hooks)


class FusedLoraLinear(peft_lora_layer.Linear):
    """PEFT's ``lora.Linear`` whose forward runs the fused LoRA op whenever PEFT would run one plain adapter.

    Built with PEFT's ``lora.Linear`` arguments; a transformers ``Conv1D`` base gets ``fan_in_fan_out=True``
    and ``is_target_conv_1d_layer=True`` as PEFT's default dispatcher sets them, and its weight is passed to
    the fused op as a transposed view (no copy).
    """

    def __init__(self, base_layer, adapter_name, config, **kwargs):
        base = base_layer.get_base_layer() if isinstance(base_layer, BaseTunerLayer) else base_layer
        # the same adjustments, with the same warnings, as PEFT's dispatch_default
        if _is_conv1d(base):
            if not config.fan_in_fan_out:
                warnings.warn("fan_in_fan_out is set to False but the target module is `Conv1D`. Setting "
                              "fan_in_fan_out to True.")
                config.fan_in_fan_out = True
            kwargs["is_target_conv_1d_layer"] = True
        elif isinstance(base, nn.Linear) and config.fan_in_fan_out:
            warnings.warn("fan_in_fan_out is set to True but the target module is `torch.nn.Linear`. Setting "
                          "fan_in_fan_out to False.")
            config.fan_in_fan_out = False
        super().__init__(base_layer, adapter_name, config=config, **kwargs)

    def fused_adapter(self, x, args=(), kwargs=None):
        """The name of the one plain LoRA adapter PEFT's forward would apply to `x`, or None (PEFT runs it).

        Fused only when: no extra forward arguments (no ``adapter_names`` mixed batch, no variant kwargs);
        adapters enabled and not merged; exactly one active adapter that this layer holds; no LoRA variant
        (DoRA, aLoRA, ...), no ``lora_bias``; dropout an ``nn.Dropout`` / ``nn.Identity`` with p < 1; base an
        ``nn.Linear`` or ``Conv1D`` with a frozen weight and bias (or no grad mode); no hooks on the modules
        PEFT would call; x floating point with ``in_features`` last; every tensor on x's device and in x's
        dtype, or under autocast in fp16 / bf16 / fp32.
        """
        if args or kwargs or self.disable_adapters or self.merged:
            return None
        active = [name for name in self.active_adapters if name in self.lora_A]
        if len(active) != 1:
            return None
        name = active[0]
        if name in self.lora_variant or self.lora_bias.get(name, False):
            return None
        base, lora_A, lora_B, dropout = self.base_layer, self.lora_A[name], self.lora_B[name], self.lora_dropout[name]
        if not (type(base) is nn.Linear or _is_conv1d(base)) or type(lora_A) is not nn.Linear \
                or type(lora_B) is not nn.Linear or lora_A.bias is not None or lora_B.bias is not None:
            return None
        if type(dropout) is nn.Dropout:
            if dropout.p >= 1.0:
                return None
        elif type(dropout) is not nn.Identity:
            return None
        if not all(_runs_plainly(m) for m in (base, lora_A, lora_B, dropout)) or _global_hooks_set():
            return None
        weight, bias = base.weight, base.bias
        if torch.is_grad_enabled() and (weight.requires_grad or (bias is not None and bias.requires_grad)):
            return None  # the fused op has no gradient for the base weight and bias
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() == 0 \
                or x.shape[-1] != self.in_features:
            return None  # PEFT's forward raises (or handles) it
        tensors = [weight, lora_A.weight, lora_B.weight] + ([bias] if bias is not None else [])
        if any(t.device != x.device or is_dtensor(t) for t in tensors + [x]):
            return None  # a DTensor: called outside its FSDP block's forward (PEFT's forward says what it says)
        if torch.is_autocast_enabled(x.device.type):
            if any(t.dtype not in AUTOCAST_DTYPES for t in tensors + [x]):
                return None
        elif any(t.dtype != x.dtype for t in tensors):
            return None
        return name

    def forward(self, x, *args, **kwargs):
        name = self.fused_adapter(x, args, kwargs)
        if name is None:
            return super().forward(x, *args, **kwargs)
        base, dropout = self.base_layer, self.lora_dropout[name]
        weight = base.weight.t() if _is_conv1d(base) else base.weight
        tensors = (x, weight, base.bias, self.lora_A[name].weight, self.lora_B[name].weight)
        autocast_on = torch.is_autocast_enabled(x.device.type)
        if autocast_on:  # cast as autocast would cast each of PEFT's GEMMs
            dtype = torch.get_autocast_dtype(x.device.type)
            tensors = tuple(t if t is None else t.to(dtype) for t in tensors)
        p = dropout.p if type(dropout) is nn.Dropout and dropout.training else 0.0
        with torch.autocast(x.device.type, enabled=False) if autocast_on else contextlib.nullcontext():
            y, _ = lora_linear(*tensors, self.scaling[name], dropout_p=p, seed=new_dropout_seed() if p > 0 else 0)
        return y


# ---------------------------------------------------------------------- switching PEFT over
_original_dispatch_default = peft_lora_model.dispatch_default


def _fused_dispatch_default(target, adapter_name, config, parameter_name=None, **kwargs):
    """PEFT's dispatch_default, except that nn.Linear and Conv1D targets get a `FusedLoraLinear`."""
    base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
    if parameter_name is None and (isinstance(base, nn.Linear) or _is_conv1d(base)):
        return FusedLoraLinear(target, adapter_name, config=config, **kwargs)
    return _original_dispatch_default(target, adapter_name, config=config, parameter_name=parameter_name, **kwargs)


def patch_peft():
    """From now on PEFT builds `FusedLoraLinear` for LoRA on ``nn.Linear`` / ``Conv1D``. Idempotent.

    Layers created before the call stay PEFT's plain ``lora.Linear`` (they still work, unfused).
    """
    peft_lora_model.dispatch_default = _fused_dispatch_default


def unpatch_peft():
    """Undo `patch_peft` (layers already built stay fused; new ones are PEFT's again). Idempotent."""
    peft_lora_model.dispatch_default = _original_dispatch_default


def is_peft_patched():
    return peft_lora_model.dispatch_default is _fused_dispatch_default


@contextlib.contextmanager
def peft_patched():
    """``with peft_patched(): model = get_peft_model(...)``: patched inside the block, restored after it."""
    was_patched = is_peft_patched()
    patch_peft()
    try:
        yield
    finally:
        if not was_patched:
            unpatch_peft()


def fused_lora_config(config):
    """Register `FusedLoraLinear` for ``nn.Linear`` and ``Conv1D`` on this one ``LoraConfig``; returns it.

    No global patch: only models built from this config object get fused layers. The mapping is not saved in
    ``adapter_config.json``, so a reloaded adapter is fused only under `patch_peft` (or when loaded with a
    config passed through this function).
    """
    from peft import LoraConfig

    if not isinstance(config, LoraConfig):
        raise TypeError(f"config must be a peft.LoraConfig, got {type(config).__name__}")
    mapping = {nn.Linear: FusedLoraLinear}
    if Conv1D is not None:
        mapping[Conv1D] = FusedLoraLinear
    config._register_custom_module(mapping)
    return config
