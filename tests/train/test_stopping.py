"""Issue 21.14: Ctrl-C and SIGTERM stop a run cleanly: the interrupted report is written once (a second Ctrl-C
cannot cut it short), the command exits 128 + the signal (130, 143), and a stop swallowed where Python drops
exceptions (a finaliser) still ends the run."""
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from act_lora_fast.cli.main import main as cli_main
from act_lora_fast.train import signals

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QUICK = ["--epochs", "2", "--max-train-samples", "48", "--max-eval-samples", "16", "--max-seq-len", "16",
         "--batch-size", "16", "--no-progress", "--no-plots"]


def _kill_self_at_step(monkeypatch, signum, step):
    """Send `signum` to this process after the `step`-th optimizer step of a run."""
    from act_lora_fast.train import loop

    original, calls = loop._Run._optimizer_step, []

    def step_then_signal(self):
        original(self)
        calls.append(1)
        if len(calls) == step:
            signal.raise_signal(signum)

    monkeypatch.setattr(loop._Run, "_optimizer_step", step_then_signal)


def test_signals_raise_once_and_are_remembered():
    with signals.stop_on_signals():
        assert signals.stop_requested() is None
        with pytest.raises(signals.Stopped) as caught:
            signal.raise_signal(signal.SIGTERM)
        assert caught.value.exit_code == 143 and isinstance(caught.value, KeyboardInterrupt)
        signal.raise_signal(signal.SIGINT)  # within the grace of the first: noted, not raised
        assert signals.stop_requested() == signal.SIGTERM
        signals._state.raised_at = None
        with signals.shielded():
            signal.raise_signal(signal.SIGINT)  # shielded: noted, not raised
        with pytest.raises(signals.Stopped):  # the checkpoint raises the stop again
            signals.raise_if_stopped()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handlers are Python's again
    signals.raise_if_stopped()  # outside stop_on_signals a stop of an earlier command is forgotten
    assert signals.stop_requested() is None
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signals.stop_reason(signals.Stopped(signal.SIGTERM)) == "SIGTERM"
    assert signals.stop_reason(KeyboardInterrupt()) == "KeyboardInterrupt"


def test_a_second_ctrl_c_while_the_report_is_written_changes_nothing(capsys, tiny_model, sst2_dir, tmp_path,
                                                                      monkeypatch):
    from act_lora_fast.train import loop

    _kill_self_at_step(monkeypatch, signal.SIGINT, step=4)  # in epoch 2: epoch 1's adapter is saved
    real_write, writes = loop.write_json, []

    def write_after_another_ctrl_c(path, obj):
        signals._state.raised_at = None  # as if the user waited past the grace: only the shield protects
        signal.raise_signal(signal.SIGINT)
        writes.append(path)
        return real_write(path, obj)

    monkeypatch.setattr(loop, "write_json", write_after_another_ctrl_c)
    out = tmp_path / "run"
    code = cli_main(["train", "--model", tiny_model, "--data-dir", sst2_dir, "--output-dir", str(out), *QUICK])
    err = capsys.readouterr().err
    assert code == 130 and err.strip() == "act-lora train: interrupted"
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "interrupted" and report["reason"] == "KeyboardInterrupt" and len(writes) == 1
    assert sorted(os.listdir(out)) == ["adapter", "report.json"]  # no .report.json.*.tmp, no lock left


def test_sigterm_is_treated_like_ctrl_c(tiny_model, sst2_dir, tmp_path):
    """In a child process: before the fix SIGTERM killed it outright (-15), leaving no report."""
    out = tmp_path / "run"
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {ROOT!r})
        import tests.conftest  # the test environment (offline, Triton interpreter)
        from act_lora_fast.train import loop
        original = loop._Run._optimizer_step
        def step_then_term(self):
            original(self)
            signal.raise_signal(signal.SIGTERM)
        loop._Run._optimizer_step = step_then_term
        from act_lora_fast.cli.main import main
        sys.exit(main({["train", "--model", tiny_model, "--data-dir", sst2_dir, "--output-dir", str(out),
                        *QUICK]!r}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 143, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == "act-lora train: stopped by SIGTERM"
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "interrupted" and report["reason"] == "SIGTERM" and report["stage"] == "training"


def test_an_early_ctrl_c_that_is_swallowed_still_stops_compare(capsys, tiny_model, sst2_dir, tmp_path,
                                                                monkeypatch):
    """Python drops a KeyboardInterrupt raised in a finaliser ("Exception ignored in ..."): the comparison
    must stop anyway, not run to the end and exit 0."""
    from act_lora_fast.train import tasks
    from act_lora_fast.train.compare import run

    real_load, trained = tasks.load_classifier, []  # compare loads its model through the task object

    def load_while_a_finaliser_swallows_ctrl_c(*args, **kwargs):
        try:
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt:
            pass  # what a __del__ does with it
        return real_load(*args, **kwargs)

    monkeypatch.setattr(tasks, "load_classifier", load_while_a_finaliser_swallows_ctrl_c)
    monkeypatch.setattr(run, "train", lambda *a, **k: trained.append(1) or pytest.fail("a run was trained"))
    out = tmp_path / "cmp"
    code = cli_main(["compare", "--model", tiny_model, "--data-dir", sst2_dir, "--output-dir", str(out),
                     "--fractions", "0.5", "--baselines", "", "--no-timing", *QUICK])
    assert code == 130 and capsys.readouterr().err.strip() == "act-lora compare: interrupted"
    assert not trained and not out.exists()  # stopped before any run: nothing written, no folder left
