"""Act-LoRA as a PEFT config: the activation ranking picks the blocks, PEFT's ``LoraConfig`` says so.

`act_lora_config` profiles the frozen model (our probe mode: each targeted linear's input norms come out of the
fused kernel's reduction), selects blocks by ``fraction`` / ``k`` / ``cumulative`` and returns a plain
``LoraConfig`` with ``layers_to_transform`` and ``layers_pattern`` set, so anything PEFT does with it (training,
``save_pretrained``, loading elsewhere) needs nothing from this package. `get_act_lora_model` also builds the
``PeftModel``, with our fused LoRA layers.
"""
from .._checks import check_lora_hyperparameters
from ..model.peft_layer import peft_patched
from .profiling import profile_activations
from .selection import select_layers

# set from the ranking; a caller's value would silently disagree with it
_OWNED_FIELDS = ("layers_to_transform", "layers_pattern")


def act_lora_config(model, batches, *, fraction=None, k=None, cumulative=None, metric="input_norm",
                    target_modules=None, blocks=None, max_batches=None, progress=False, **lora_kwargs):
    """A ``peft.LoraConfig`` putting LoRA on the targeted linears of the blocks the activation ranking selects.

    Args:
        model: the base model (not yet a PeftModel); it is left exactly as it was.
        batches: calibration batches, dicts of tensors as a tokenizer or DataLoader gives them.
        fraction / k / cumulative: exactly one: the share of blocks, their number, or the smallest top-ranked
            set covering that share of the total score (see `act_lora_fast.method.selection.select_layers`).
        metric: ``"input_norm"`` (the paper's), ``"input_rms"`` or ``"block_output"``.
        target_modules: which linears in a block (PEFT's forms: list of names, regex, ``"all-linear"``);
            None: the attention and MLP linears of known architectures, else every linear in the blocks.
        blocks: module path of the block list when it cannot be found automatically (``"model.layers"``).
        max_batches, progress: as in `profile_activations`.
        **lora_kwargs: any other ``LoraConfig`` field (``r``, ``lora_alpha``, ``lora_dropout``,
            ``modules_to_save``, ...), except the two set here.

    The returned config's ``target_modules`` are block-relative names (``attention.self.query``), so PEFT
    matches exactly the modules that were profiled, and only in the selected blocks.
    """
    from peft import LoraConfig

    clashing = [name for name in _OWNED_FIELDS if name in lora_kwargs]
    if clashing:
        raise TypeError(f"act_lora_config sets {', '.join(clashing)} itself from the activation ranking; "
                        "choose the blocks with fraction, k or cumulative")
    given = LoraConfig(**lora_kwargs)  # an unknown field or a bad rank fails now, not after the profiling
    check_lora_hyperparameters(given.r, given.lora_alpha, given.lora_dropout, where="act_lora_config")
    scores = profile_activations(model, batches, target_modules=target_modules, metric=metric,
                                 max_batches=max_batches, progress=progress, blocks=blocks)
    layers = select_layers(scores, k=k, fraction=fraction, cumulative=cumulative)
    chosen = set(layers)
    names = sorted({name[len(scores.block_path) + 1:].split(".", 1)[1] for name in scores.module_shapes
                    if scores.block_of(name) in chosen})
    return LoraConfig(target_modules=names, layers_to_transform=layers, layers_pattern=scores.layers_pattern,
                      **lora_kwargs)


def get_act_lora_model(model, batches, *, fraction=None, k=None, cumulative=None, metric="input_norm",
                       target_modules=None, blocks=None, max_batches=None, progress=False, adapter_name="default",
                       **lora_kwargs):
    """``peft.get_peft_model`` with the `act_lora_config` of `model`, its LoRA layers fused.

    The fused layers are built under `act_lora_fast.model.peft_layer.peft_patched` (PEFT is unpatched again
    afterwards). The adapter it saves is a plain PEFT adapter.
    """
    from peft import get_peft_model

    config = act_lora_config(model, batches, fraction=fraction, k=k, cumulative=cumulative, metric=metric,
                             target_modules=target_modules, blocks=blocks, max_batches=max_batches,
                             progress=progress, **lora_kwargs)
    with peft_patched():
        return get_peft_model(model, config, adapter_name=adapter_name)
