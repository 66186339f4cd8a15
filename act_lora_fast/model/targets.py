"""Which modules a PEFT-style config names: one module for our matcher and PEFT's, so both mean the same thing.

- a list: a module matches when its full name equals an entry or ends with ``"." + entry``;
- a string: a regex that must match the full module name (``re.fullmatch``);
- ``"all-linear"``: every linear inside the blocks (our injection; PEFT resolves it itself).

`peft_matches` adds what PEFT's ``check_target_module_exists`` does with a whole adapter config:
``modules_to_save``, ``exclude_modules``, ``layers_to_transform`` and ``layers_pattern``.
"""
import re

ALL_LINEAR = "all-linear"


def matches_target(name, target_modules):
    """PEFT's rule: exact name or ``.``-suffix for a list, full-name regex for a string."""
    if isinstance(target_modules, str):
        return target_modules == ALL_LINEAR or re.fullmatch(target_modules, name) is not None
    return name in target_modules or any(name.endswith("." + t) for t in target_modules)


def check_target_modules(target_modules):
    if target_modules is None or isinstance(target_modules, str):
        if isinstance(target_modules, str):
            try:
                re.compile(target_modules)
            except re.error as err:
                raise ValueError(f"target_modules {target_modules!r} is not a valid regex: {err}") from None
        return target_modules
    if isinstance(target_modules, (list, tuple, set)) and target_modules and all(
            isinstance(t, str) and t for t in target_modules):
        return sorted(target_modules) if isinstance(target_modules, set) else list(target_modules)
    raise TypeError(f"target_modules must be None, 'all-linear', a regex string or a non-empty list of module "
                    f"names, got {target_modules!r}")


def peft_matches(config, name):
    """Whether PEFT (0.21, ``check_target_module_exists``) targets module `name` under `config` (a dict)."""
    modules_to_save = config.get("modules_to_save") or []
    if any(re.match(rf"(^|.*\.){m}($|\..*)", name) for m in modules_to_save):
        return False  # PEFT never puts an adapter inside a module it saves whole
    exclude = config.get("exclude_modules")
    if exclude and matches_target(name, exclude):
        return False
    targets = config["target_modules"]
    if isinstance(targets, str) or name in targets:  # a regex or an exact name ignores layers_to_transform
        return matches_target(name, targets)
    if not matches_target(name, targets):
        return False
    layers = config.get("layers_to_transform")
    if layers is None or (isinstance(layers, list) and not layers):
        return True
    patterns = config.get("layers_pattern")
    if not patterns:
        match = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", name)
    else:
        match = None
        for pattern in [patterns] if isinstance(patterns, str) else patterns:
            match = re.match(rf"(?:^|.*?\.){pattern}\.(?P<idx>\d+)\.", name)
            if match:
                break
    if match is None:
        return False
    index = int(match.group("idx"))
    return index == layers if isinstance(layers, int) else index in layers
