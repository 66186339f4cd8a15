"""`act-lora train` / `compare` failures: one line on stderr, exit 2 (130 for Ctrl-C), found before any work."""
import json
import os
import resource
import subprocess
import sys

import pytest
import torch

from act_lora_fast.cli.main import main as cli_main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QUICK = ["--epochs", "1", "--max-train-samples", "32", "--max-eval-samples", "16", "--max-seq-len", "16",
         "--batch-size", "16", "--no-progress", "--no-plots"]


def _run(capsys, argv):
    code = cli_main(argv)
    captured = capsys.readouterr()
    return code, captured.err


def _one_line(err):
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda_is_one_line(capsys, tmp_path, unloadable_model):
    code, err = _run(capsys, ["train", "--model", unloadable_model, "--device", "cuda", *QUICK])
    assert code == 2 and "CUDA is not available" in _one_line(err)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_backend_triton_on_cpu_without_interpreter_is_one_line(capsys, tmp_path, kernels_not_interpreted,
                                                               unloadable_model):
    code, err = _run(capsys, ["train", "--model", unloadable_model, "--backend", "triton", *QUICK])
    assert code == 2 and "TRITON_INTERPRET" in _one_line(err)


def test_diverging_loss_is_one_line(capsys, tiny_model, sst2_dir):  # noqa: F811
    code, err = _run(capsys, ["train", "--model", tiny_model, "--data-dir", sst2_dir, "--lr", "1e9",
                              "--max-grad-norm", "0", "--warmup-ratio", "0", *QUICK])
    assert code == 2 and "training loss became" in _one_line(err)


def test_ctrl_c_exits_130_without_traceback(capsys, tmp_path, monkeypatch):
    from act_lora_fast.train import loop

    def interrupted(config, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "train", interrupted)
    (tmp_path / "config.json").write_text("{}")  # a model folder, as far as the command line checks
    code, err = _run(capsys, ["train", "--model", str(tmp_path), *QUICK])
    assert code == 130 and _one_line(err) == "act-lora train: interrupted"


@pytest.mark.parametrize("where", ["file", "under-a-file"])
def test_bad_output_dir_exits_2_before_any_work(capsys, tmp_path, where, unloadable_model):
    (tmp_path / "f").write_text("x")
    out = tmp_path / "f" if where == "file" else tmp_path / "f" / "run"
    code, err = _run(capsys, ["train", "--model", unloadable_model, "--output-dir", str(out), *QUICK])
    assert code == 2 and str(out) in _one_line(err) and "model folder not found" not in err


def test_earlier_run_folder_needs_overwrite(capsys, tiny_model, sst2_dir, tmp_path):  # noqa: F811
    out = str(tmp_path / "run")
    assert _run(capsys, ["train", "--model", tiny_model, "--data-dir", sst2_dir, "--output-dir", out, *QUICK])[0] == 0
    code, err = _run(capsys, ["train", "--model", tiny_model, "--data-dir", sst2_dir, "--output-dir", out, *QUICK])
    assert code == 2 and "--overwrite" in _one_line(err)
    code, _ = _run(capsys, ["train", "--model", tiny_model, "--data-dir", sst2_dir, "--output-dir", out,
                            "--overwrite", "--no-save-adapter", *QUICK])
    assert code == 0 and sorted(os.listdir(out)) == ["report.json"]


def test_resume_with_conflicting_lora_options_is_refused(capsys, tiny_model, sst2_dir, tmp_path):  # noqa: F811
    out = str(tmp_path / "a")
    assert _run(capsys, ["train", "--model", tiny_model, "--data-dir", sst2_dir, "--output-dir", out,
                         "--selection", "last", "--k", "1", "--r", "4", "--alpha", "8", *QUICK])[0] == 0
    adapter = os.path.join(out, "adapter")
    code, err = _run(capsys, ["train", "--model", tiny_model, "--data-dir", sst2_dir, "--resume-from", adapter,
                              "--alpha", "16", *QUICK])
    assert code == 2 and "--alpha 16 conflicts with the adapter" in _one_line(err) and "alpha=8" in err
    for option in (["--fraction", "0.25"], ["--layers", "0,1"], ["--selection", "all"]):
        code, err = _run(capsys, ["train", "--model", tiny_model, "--data-dir", sst2_dir, "--resume-from", adapter,
                                  *option, *QUICK])
        assert code == 2 and f"{option[0]} conflicts with --resume-from" in _one_line(err), option
    out_b = str(tmp_path / "b")  # the same values, or none, are fine; the report records the adapter's
    code, _ = _run(capsys, ["train", "--model", tiny_model, "--data-dir", sst2_dir, "--resume-from", adapter,
                            "--r", "4", "--output-dir", out_b, *QUICK])
    report = json.loads(open(os.path.join(out_b, "report.json")).read())
    assert code == 0 and report["config"]["r"] == 4 and report["config"]["alpha"] == 8
    assert report["lora"]["alpha"] == 8 and report["resumed_from"] == adapter
    assert report["selection"] == report["selection_label"] == "resumed" and report["selected_layers"] == [3]


def test_compare_without_tasks_or_variants_exits_2(capsys, tmp_path):
    code, err = _run(capsys, ["compare", "--task", "", "--model", str(tmp_path), "--output-dir", str(tmp_path)])
    assert code == 2 and "--task needs at least one task name" in _one_line(err)
    code, err = _run(capsys, ["compare", "--task", "sst2", "--fractions", "", "--baselines", "",
                              "--model", str(tmp_path), "--output-dir", str(tmp_path / "c")])
    assert code == 2 and "nothing to compare" in _one_line(err)


def test_compare_refuses_an_earlier_compare_before_any_run(capsys, tmp_path, unloadable_model):
    out = tmp_path / "cmp"
    (out / "activation-50pct").mkdir(parents=True)
    (out / "activation-50pct" / "report.json").write_text("{}")
    argv = ["compare", "--task", "sst2", "--fractions", "0.5", "--baselines", "",
            "--model", unloadable_model, "--output-dir", str(out)]
    code, err = _run(capsys, argv)
    assert code == 2 and "activation-50pct" in _one_line(err) and "--overwrite" in err


def test_demo_output_dir_that_is_a_file_fails_first(capsys, tmp_path, unloadable_model):
    (tmp_path / "f").write_text("x")
    code, err = _run(capsys, ["demo", "--output-dir", str(tmp_path / "f"), "--model", unloadable_model])
    assert code == 2 and "is a file" in _one_line(err)


@pytest.mark.parametrize("argv, words", [
    (["train", "--task", "sst2", "--data-dir", "{missing}", "--output-dir", "{out}"], "not found"),
    (["compare", "--task", "sst2", "--random-draws", "0", "--output-dir", "{out}"], "random_draws"),
    (["compare", "--task", "sst2,nosuchtask", "--fractions", "0.5", "--baselines", "", "--output-dir", "{out}"],
     "nosuchtask"),
    (["stability", "--seeds", "1", "--out", "{out}"], "seeds"),
    (["demo", "--data-dir", "{missing}", "--output-dir", "{out}"], "not found"),
], ids=["train-bad-data", "compare-bad-draws", "compare-bad-second-task", "stability-bad-seeds", "demo-bad-data"])
def test_a_run_refused_before_writing_anything_leaves_no_folder(capsys, tmp_path, argv, words):
    """README: a run stopped during setup has written nothing and leaves nothing, not even its folder."""
    out, missing = tmp_path / "out", tmp_path / "no-such-data"
    code, err = _run(capsys, [a.format(out=out, missing=missing) for a in argv])
    assert code == 2 and words in _one_line(err)
    assert not out.exists(), sorted(p.name for p in out.iterdir())


def test_train_without_output_dir_says_nothing_will_be_saved(capsys, tiny_model, sst2_dir, tmp_path,  # noqa: F811
                                                             monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli_main(["train", "--model", tiny_model, "--data-dir", sst2_dir, *QUICK]) == 0
    assert capsys.readouterr().out.startswith("no --output-dir: the report and the adapter will not be saved")
    assert os.listdir(tmp_path) == []


def test_train_under_a_file_size_limit_is_one_line_exit_2(tiny_model, sst2_dir, tmp_path):
    """Issue 21.11: a run whose adapter cannot be written (a full disk, a file-size limit) ends with one line
    and exit 2, no traceback."""
    out = tmp_path / "run"
    argv = ["train", "--model", tiny_model, "--data-dir", sst2_dir, "--output-dir", str(out), "--epochs", "1",
            "--max-train-samples", "16", "--max-eval-samples", "8", "--max-seq-len", "16", "--no-progress",
            "--no-plots"]
    script = (f"import sys; sys.path.insert(0, {ROOT!r}); import tests.conftest; "
              f"from act_lora_fast.cli.main import main; sys.exit(main({argv!r}))")

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (8192, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, cwd=ROOT,
                          preexec_fn=limit_file_size, env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = [line for line in done.stderr.splitlines() if line.strip() and "Warning" not in line]
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert lines[-1].startswith("act-lora train: error: ") and lines[-1].endswith(
        f"cannot write the adapter folder {out / 'adapter'}: File too large"), done.stderr[-3000:]
    assert not [name for name in os.listdir(out) if name.startswith(".adapter")]


def test_overwrite_never_deletes_the_adapter_being_resumed_from(capsys, tiny_model, sst2_dir, tmp_path):  # noqa: F811
    """Issue 21.4: --overwrite deleted OUT/adapter before --resume-from OUT/adapter read it."""
    out = tmp_path / "run"
    assert _run(capsys, ["train", "--model", tiny_model, "--data-dir", sst2_dir, "--output-dir", str(out),
                         *QUICK])[0] == 0
    adapter = out / "adapter"
    before = {name: (adapter / name).read_bytes() for name in os.listdir(adapter)}
    for source in (adapter, tmp_path / "link"):  # the folder itself, and a link to it
        if source != adapter:
            os.symlink(adapter, source)
        code, err = _run(capsys, ["train", "--model", tiny_model, "--data-dir", sst2_dir, "--output-dir", str(out),
                                  "--overwrite", "--resume-from", str(source), *QUICK])
        line = _one_line(err)
        assert code == 2 and f"resume_from {source} is the earlier run's adapter" in line, line
        assert {name: (adapter / name).read_bytes() for name in os.listdir(adapter)} == before
    assert sorted(os.listdir(out)) == ["adapter", "report.json"]
