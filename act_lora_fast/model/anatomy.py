"""Model anatomy: where a Hugging Face Transformer keeps its blocks and which linears Act-LoRA targets.

Which linears a ``target_modules`` names follows PEFT's rule (see `targets`).

GPT-2's ``Conv1D`` (a linear with a transposed weight) is handled, not refused: `as_linear` presents it as a
`Conv1DAsLinear`, an ``nn.Linear`` whose weight is a transposed *view* of the Conv1D's (no copy). An adapter
on it stores ``lora_A`` (r × in) and ``lora_B`` (out × r) exactly as PEFT does with ``fan_in_fan_out=True``.
"""
import dataclasses

from torch import nn

from ..layer import FastActLoRALinear
from .targets import check_target_modules, matches_target

try:
    from transformers.pytorch_utils import Conv1D
except ImportError:  # transformers is optional for plain-PyTorch models
    Conv1D = None

_ATTN_MLP_LLAMA = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
_BERT_LIKE = ["query", "key", "value", "dense"]
DEFAULT_TARGET_MODULES = {
    # attention projections and MLP of each block (the pooler's "dense" is outside the blocks)
    **dict.fromkeys(["bert", "roberta", "xlm-roberta", "camembert", "electra", "ernie"], _BERT_LIKE),
    "deberta-v2": ["query_proj", "key_proj", "value_proj", "dense"],
    "distilbert": ["q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"],
    **dict.fromkeys(["llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text",
                     "olmo", "olmo2", "granite"], _ATTN_MLP_LLAMA),
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "opt": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    "gpt_neox": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
}

# ModuleList names that hold the Transformer blocks, preferred when a model has several ModuleLists.
_KNOWN_BLOCK_LISTS = ("encoder.layer", "transformer.layer", "decoder.layers", "layers", "layer", "h", "blocks")


@dataclasses.dataclass
class BlockStack:
    """The model's Transformer blocks: ``path`` in ``named_modules()`` and the modules themselves.

    ``layers_pattern`` is the path's last component, the way PEFT's ``layers_pattern`` names it.
    """
    path: str
    blocks: list
    layers_pattern: str

    def __len__(self):
        return len(self.blocks)


class Conv1DAsLinear(nn.Linear):
    """GPT-2's Conv1D as an ``nn.Linear``: the weight is a transposed view of the Conv1D's, the bias is shared."""

    def __init__(self, conv):
        nn.Module.__init__(self)  # skip nn.Linear's allocation: the weight comes from the Conv1D
        self.in_features, self.out_features = conv.weight.shape
        self.weight = nn.Parameter(conv.weight.detach().t(), requires_grad=conv.weight.requires_grad)
        self.bias = conv.bias

    def to_conv1d(self):
        """A Conv1D on the same storage again (so merged weights carry over)."""
        conv = Conv1D.__new__(Conv1D)
        nn.Module.__init__(conv)
        conv.nf, conv.nx = self.out_features, self.in_features
        conv.weight = nn.Parameter(self.weight.detach().t(), requires_grad=self.weight.requires_grad)
        conv.bias = self.bias
        return conv


def is_conv1d(module):
    return Conv1D is not None and isinstance(module, Conv1D)


def is_linear_like(module):
    """A module Act-LoRA can target: nn.Linear, GPT-2's Conv1D, or an already injected FastActLoRALinear."""
    return isinstance(module, (nn.Linear, FastActLoRALinear)) or is_conv1d(module)


def as_linear(module):
    """`module` as an nn.Linear sharing its weights (GPT-2's Conv1D becomes a `Conv1DAsLinear`)."""
    if is_conv1d(module):
        return Conv1DAsLinear(module)
    if isinstance(module, nn.Linear):
        return module
    raise TypeError(f"cannot wrap a {type(module).__name__}: Act-LoRA targets nn.Linear and GPT-2's Conv1D")


def linear_shape(module):
    """(out_features, in_features) of a linear-like module."""
    if isinstance(module, FastActLoRALinear):
        return module.out_features, module.in_features
    if is_conv1d(module):
        return module.weight.shape[1], module.weight.shape[0]
    return module.out_features, module.in_features


def unwrap_model(model):
    """The module under DistributedDataParallel / DataParallel wrappers."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def _stack_at(model, path):
    try:
        stack = model.get_submodule(path)
    except AttributeError:
        raise ValueError(f"blocks={path!r}: the model has no submodule at that path") from None
    if not isinstance(stack, (nn.ModuleList, nn.Sequential)) or len(stack) == 0:
        raise ValueError(f"blocks={path!r} is a {type(stack).__name__}, expected a non-empty nn.ModuleList "
                         "(or nn.Sequential) of Transformer blocks")
    return BlockStack(path, list(stack), path.rsplit(".", 1)[-1])


def _looks_like_block_list(module):
    children = list(module)
    if not children or len({type(c) for c in children}) != 1:
        return False
    return any(is_linear_like(m) for m in children[0].modules())


def find_blocks(model, blocks=None):
    """The model's `BlockStack`. ``blocks`` (e.g. ``"model.layers"``) overrides the search.

    Without it, the stack is the model's ModuleList of identical modules that contain linears; when several
    qualify, the ones named like a known architecture's (``encoder.layer``, ``layers``, ``h``, ...) win.
    """
    model = unwrap_model(model)
    if blocks is not None:
        if not isinstance(blocks, str) or not blocks:
            raise TypeError(f"blocks must be a module path string such as 'model.layers', got {blocks!r}")
        return _stack_at(model, blocks)
    candidates = [name for name, module in model.named_modules()
                  if isinstance(module, nn.ModuleList) and name and _looks_like_block_list(module)]
    if len(candidates) > 1:
        known = [n for n in candidates if any(n == k or n.endswith("." + k) for k in _KNOWN_BLOCK_LISTS)]
        candidates = known or candidates
    if len(candidates) == 1:
        return _stack_at(model, candidates[0])
    hint = ("pass blocks='<path>' naming the nn.ModuleList of Transformer blocks, e.g. blocks='model.layers' "
            "or blocks='bert.encoder.layer'")
    if not candidates:
        raise ValueError(f"cannot find the Transformer blocks of {type(model).__name__}: no nn.ModuleList of "
                         f"identical blocks with linear layers; {hint}")
    raise ValueError(f"{type(model).__name__} has several block stacks ({', '.join(candidates)}); {hint}")


def default_target_modules(model, blocks=None):
    """The attention and MLP linears for known architectures; every linear in the blocks otherwise.

    ``blocks`` names the block list as in `find_blocks` (needed where the model has several, as T5).
    """
    model = unwrap_model(model)
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in DEFAULT_TARGET_MODULES:
        return list(DEFAULT_TARGET_MODULES[model_type])
    stack = find_blocks(model, blocks)
    names = {name.rsplit(".", 1)[-1] for block in stack.blocks for name, module in _block_linears(block)}
    return sorted(names)


def _block_linears(block):
    """(relative name, module) of each linear-like module in a block, not descending into injected layers."""
    inside_adapter = []
    for name, module in block.named_modules():
        if not name or any(name.startswith(prefix) for prefix in inside_adapter):
            continue
        if is_linear_like(module):
            yield name, module
            if isinstance(module, FastActLoRALinear):
                inside_adapter.append(name + ".")


def target_linears(model, target_modules=None, blocks=None):
    """``{block index: {full module name: module}}`` of the targeted linears in every block.

    ``target_modules=None`` uses `default_target_modules`. Raises ValueError when nothing matches.
    """
    model = unwrap_model(model)
    target_modules = check_target_modules(target_modules)
    if target_modules is None:
        target_modules = default_target_modules(model, blocks)
    stack = find_blocks(model, blocks)
    found = {}
    for index, block in enumerate(stack.blocks):
        prefix = f"{stack.path}.{index}."
        found[index] = {prefix + rel: module for rel, module in _block_linears(block)
                        if matches_target(prefix + rel, target_modules)}
    if not any(found.values()):
        available = sorted({rel.rsplit(".", 1)[-1] for rel, _ in _block_linears(stack.blocks[0])})
        raise ValueError(f"target_modules={target_modules!r} matches no linear layer in the blocks at "
                         f"{stack.path!r}; the blocks' linears are named {available}")
    return found


def replace_module(model, name, new):
    """Put `new` at dotted path `name` (works for ModuleList indices too)."""
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, leaf, new)
