"""Argument types shared by the subcommands."""
import argparse


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
