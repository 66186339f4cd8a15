"""Typed argument checks: each returns the checked value or raises one clear error naming the argument.

A wrong type raises TypeError, a value out of range ValueError; bools are never numbers here.
"""
import math
import numbers
from collections.abc import Mapping


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_int(name, value, low=None, high=None, *, optional=False):
    """An int in [low, high] (either bound may be None); None passes when `optional`."""
    if value is None and optional:
        return None
    if low is not None and high is not None:
        wanted = f"an int in [{low}, {high}]"
    elif low is not None:
        wanted = f"an int >= {low}"
    else:
        wanted = "an int"
    wanted += " or None" if optional else ""
    if not _is_int(value):
        raise TypeError(f"{name} must be {wanted}, got {value!r} ({type(value).__name__})")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name} must be {wanted}, got {value!r}")
    return int(value)


def check_real(name, value, *, optional=False):
    """A finite real number (not a bool); None passes when `optional`."""
    if value is None and optional:
        return None
    if not _is_real(value):
        raise TypeError(f"{name} must be a number{' or None' if optional else ''}, got {value!r} "
                        f"({type(value).__name__})")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return value


def check_positive(name, value, *, optional=False):
    """A finite number > 0."""
    if value is None and optional:
        return None
    if _is_real(value) and not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return check_real(name, value, optional=optional)


def check_non_negative(name, value):
    if _is_real(value) and not value >= 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return check_real(name, value)


def check_probability(name, value):
    """A probability of dropping: in [0, 1)."""
    if _is_real(value) and not 0 <= value < 1:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return check_real(name, value)


def check_fraction(name, value, *, optional=False):
    """A share of something: in (0, 1]."""
    if value is None and optional:
        return None
    if _is_real(value) and not 0 < value <= 1:
        raise ValueError(f"{name} must be in (0, 1], got {value!r}")
    return check_real(name, value, optional=optional)


def check_bool(name, value):
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool (True or False), got {value!r}")
    return value


def check_choice(name, value, choices):
    """One of `choices` (strings); the error lists them."""
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(map(str, choices))}")
    return value


def check_lora_hyperparameters(r, alpha, dropout, *, where=""):
    """LoRA's rank (int >= 1), alpha (finite, > 0) and dropout ([0, 1)); `where` prefixes the message."""
    prefix = f"{where}: " if where else ""
    try:
        check_int("r", r, 1)
        check_positive("alpha", alpha)
        check_probability("dropout", dropout)
    except (TypeError, ValueError) as err:
        raise type(err)(prefix + str(err)) from None
    return r, alpha, dropout


def check_block_count(name, value, num_blocks):
    """A number of blocks: an int between 1 and `num_blocks`."""
    check_int(name, value)
    if not 1 <= value <= num_blocks:
        raise ValueError(f"{name} must be an int between 1 and the number of blocks ({num_blocks}), got {value}")
    return int(value)


def check_layers(layers, num_blocks):
    """`layers` as a sorted list of distinct block indices in [0, num_blocks)."""
    if isinstance(layers, (str, bytes)) or not hasattr(layers, "__iter__"):
        raise TypeError(f"layers must be a list of block indices, got {type(layers).__name__}")
    layers = list(layers)
    for index in layers:
        if not _is_int(index):
            raise TypeError(f"layers must hold ints, got {index!r} ({type(index).__name__})")
        if not 0 <= index < num_blocks:
            raise ValueError(f"block index {index} does not exist: the model has {num_blocks} blocks "
                             f"(0..{num_blocks - 1})")
    if not layers:
        raise ValueError("layers is empty: choose at least one block")
    return sorted({int(i) for i in layers})


def score_list(scores, name="scores"):
    """Per-block scores as a non-empty list of finite floats, from a LayerScores or a sequence of numbers."""
    if hasattr(scores, "scores") and not isinstance(scores, Mapping):
        scores = scores.scores
    if isinstance(scores, (str, bytes, Mapping)) or not hasattr(scores, "__iter__"):
        raise TypeError(f"{name} must be a LayerScores or a list of numbers, got {type(scores).__name__}")
    values = list(scores)
    if not values:
        raise ValueError(f"{name} is empty: there are no blocks to rank")
    for index, value in enumerate(values):
        if not _is_real(value):
            raise TypeError(f"{name} must hold numbers, got {value!r} ({type(value).__name__}) at [{index}]")
        if not math.isfinite(value):
            raise ValueError(f"{name}[{index}] is {value!r}: scores must be finite numbers")
    return [float(v) for v in values]


def ranking_of(scores):
    """Block indices by score, highest first; ties go to the lower index."""
    values = score_list(scores)
    return sorted(range(len(values)), key=lambda i: (-values[i], i))
