"""pytest plugin: run PEFT's own test suite with act_lora_fast.patch_peft() in force (issue 13's acceptance test).

From an unpacked peft sdist of the installed version (its tests/ folder):
    PYTHONPATH=/path/to/act-lora-fast/benchmarks python -m pytest tests/test_custom_models.py -q \
        -p no:randomly -p no:cacheprovider -p peft_suite_plugin -k LoraConfig
and the same without ``-p peft_suite_plugin`` for the reference run. Counts the fused calls, so the run shows the
fused path was taken and not only the fallback."""
from act_lora_fast.model import peft_layer

peft_layer.patch_peft()
_calls = [0]
_lora_linear = peft_layer.lora_linear


def _counting(*args, **kwargs):
    _calls[0] += 1
    return _lora_linear(*args, **kwargs)


peft_layer.lora_linear = _counting


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(f"act_lora_fast: patch_peft() in force: {peft_layer.is_peft_patched()}, "
                                f"fused lora_linear calls: {_calls[0]}")
