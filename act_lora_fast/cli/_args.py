"""Argument types shared by the subcommands."""
import argparse
import os


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def csv_list(text):
    return [part.strip() for part in text.split(",") if part.strip()]


def csv_floats(text):
    try:
        return [float(part) for part in csv_list(text)]
    except ValueError:
        raise ValueError(f"expected comma-separated numbers, got {text!r}") from None


def target_modules(text):
    """'all-linear' as is, else a comma-separated list of module names."""
    return text if text == "all-linear" else csv_list(text)


def model_location(name):
    """A model argument as the library takes it (`resolve_model_path`). A hub id while huggingface.co cannot
    be reached becomes its cached snapshot's folder, or a one-line error when it is not cached, instead of
    a minute of logged retries."""
    from ..data.glue import hub_reachable
    from ..model.hf import resolve_model_path

    path = resolve_model_path(name)
    if os.path.isdir(path) or hub_reachable():
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return resolve_model_path(snapshot_download(path, local_files_only=True))
    except LocalEntryNotFoundError:
        raise FileNotFoundError(f"model {name!r} is neither a folder nor in the Hugging Face cache, and "
                                "huggingface.co cannot be reached; pass a model folder (or 'minilm')") from None
