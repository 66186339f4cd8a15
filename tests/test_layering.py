"""The package's layers (one folder each) import only downwards, function-level imports included (README
"Layout"): a lower layer never reaches a higher one, so each can be used and tested without those above."""
import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "act_lora_fast"
# Bottom to top; the package's __init__ (the lazy public API) stands above them all.
LAYERS = ["_checks", "_io", "_dist", "kernels", "functional", "layer", "model", "data", "method", "measure",
          "train", "cli"]
FOUNDATIONS = {"_checks", "_io", "_dist"}  # shared helpers: they import no other layer


def _layer(module):
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path):
    """(line, imported module) of every import of this package in `path`, at any depth."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    package = package[: -len(".__init__")] if package.endswith(".__init__") else package
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            if node.module:
                yield node.lineno, ".".join(base + [node.module])
            else:
                yield from ((node.lineno, ".".join(base + [alias.name])) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("act_lora_fast"):
            yield node.lineno, node.module
        elif isinstance(node, ast.Import):
            yield from ((node.lineno, a.name) for a in node.names if a.name.startswith("act_lora_fast"))


def test_every_layer_imports_only_itself_and_the_layers_below():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 40  # the walk found the package
    upward = []
    for path in files:
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        source = _layer(module.replace(".__init__", "")) if path.name != "__init__.py" or path.parent != PACKAGE \
            else "__init__"
        if source == "__init__":
            continue  # the public API may name anything (lazily)
        assert source in LAYERS, f"{path}: not in a known layer; add it to LAYERS"
        for line, target in _imports(path):
            layer = _layer(target)
            if layer == source:
                continue
            if layer == "__init__" or layer not in LAYERS or LAYERS.index(layer) > LAYERS.index(source) or (
                    source in FOUNDATIONS):
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({source}) imports {target} ({layer})")
    assert not upward, "imports that point up:\n" + "\n".join(upward)
