"""Issue 21.1, 21.12, 21.13, 21.17: `compare --resume` keeps an earlier run only when it is the same run: every
option that changes a result is recorded and compared (a difference is refused, naming the options), an
interrupted comparison says so and its interrupted run is trained again, a run whose folder is gone is trained
again, and a malformed compare.json is one line naming the file."""
import json
import os
import shutil
import signal

import pytest

from act_lora_fast.cli.main import main as cli_main

pytestmark = pytest.mark.usefixtures("one_thread")

QUICK = ["--fractions", "0.5", "--baselines", "", "--no-timing", "--epochs", "1", "--max-train-samples", "32",
         "--max-eval-samples", "16", "--max-seq-len", "16", "--batch-size", "16", "--calibration-samples", "32",
         "--no-progress", "--no-plots"]


def _argv(model, data_dir, out, *extra):
    return ["compare", "--model", model, "--data-dir", data_dir, "--output-dir", str(out), *QUICK, *extra]


def _compare_json(out):
    return json.loads((out / "compare.json").read_text())


def _one_line(capsys):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def interrupted_then_resumed(tiny_model, sst2_dir, tmp_path_factory):
    """A two-run compare stopped by Ctrl-C in its second run, then resumed; the runs each call trained."""
    from act_lora_fast.train import loop
    from act_lora_fast.train.compare import run

    out = tmp_path_factory.mktemp("resume") / "cmp"
    trained, state = [], {"armed": True}
    real_train, real_step = run.train, loop._Run._optimizer_step

    def recording_train(config, **kwargs):
        trained.append(os.path.basename(config.output_dir))
        return real_train(config, **kwargs)

    def step(self):
        real_step(self)
        if state["armed"] and len(trained) == 2:
            state["armed"] = False
            signal.raise_signal(signal.SIGINT)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(run, "train", recording_train)
        patch.setattr(loop._Run, "_optimizer_step", step)
        stopped = cli_main(_argv(tiny_model, sst2_dir, out))
        after_stop = _compare_json(out)
        second_run = json.loads((out / "activation-50pct" / "report.json").read_text())
        trained_before = list(trained)
        resumed = cli_main(_argv(tiny_model, sst2_dir, out, "--resume"))
    return dict(out=out, stopped=stopped, after_stop=after_stop, second_run=second_run,
                trained_before=trained_before, trained_after=trained[len(trained_before):], resumed=resumed,
                trained=trained, patch_train=recording_train)


def test_an_interrupted_compare_says_so(interrupted_then_resumed):
    state = interrupted_then_resumed
    assert state["stopped"] == 130 and state["trained_before"] == ["all", "activation-50pct"]
    assert state["after_stop"]["status"] == "interrupted" and state["after_stop"]["reason"] == "KeyboardInterrupt"
    assert state["after_stop"]["completed_runs"] == 1 and state["second_run"]["status"] == "interrupted"


def test_resume_trains_the_interrupted_run_again_and_keeps_the_finished_one(interrupted_then_resumed):
    state = interrupted_then_resumed
    assert state["resumed"] == 0 and state["trained_after"] == ["activation-50pct"]
    final = _compare_json(state["out"])
    assert final["status"] == "complete" and final["completed_runs"] == final["planned_runs"] == 2
    assert [len(v["runs"]) for v in final["variants"]] == [1, 1]
    assert final["variants"][0]["runs"][0] == state["after_stop"]["variants"][0]["runs"][0]  # kept as it was
    report = json.loads((state["out"] / "activation-50pct" / "report.json").read_text())
    assert report["status"] == "completed"


@pytest.mark.parametrize("option, value, named", [
    ("--task", "rte", "task"), ("--dropout", "0.1", "dropout"), ("--max-eval-samples", "8", "max_eval_samples"),
    ("--warmup-ratio", "0.2", "warmup_ratio"), ("--weight-decay", "0", "weight_decay"),
    ("--data-dir", "{other}", "data_dir"), ("--precision", "bf16", "precision"),
    ("--modules-to-save", "classifier", "modules_to_save"), ("--metric", "input_rms", "metric"),
    ("--max-seq-len", "24", "max_seq_len"), ("--lr", "1e-3", "learning_rate"),
])
def test_resume_with_another_result_changing_option_is_refused_naming_it(interrupted_then_resumed, tiny_model,
                                                                         sst2_dir, tmp_path, capsys, option,
                                                                         value, named):
    """Before: `--resume --task rte` after an SST-2 compare trained nothing and labelled SST-2 scores RTE."""
    out = interrupted_then_resumed["out"]
    before = (out / "compare.json").read_text()
    code = cli_main(_argv(tiny_model, sst2_dir, out, "--resume", option, value.format(other=tmp_path)))
    line = _one_line(capsys)
    assert code == 2 and f"cannot resume from {out / 'compare.json'}" in line and f" {named} " in line, line
    assert (out / "compare.json").read_text() == before


def test_resume_names_every_option_that_differs(interrupted_then_resumed, tiny_model, sst2_dir, capsys):
    out = interrupted_then_resumed["out"]
    code = cli_main(_argv(tiny_model, sst2_dir, out, "--resume", "--dropout", "0.1", "--weight-decay", "0.5"))
    line = _one_line(capsys)
    assert code == 2 and "dropout 0.0 there, 0.1 now" in line and "weight_decay 0.01 there, 0.5 now" in line


def test_a_run_whose_files_are_gone_is_trained_again(interrupted_then_resumed, tiny_model, sst2_dir, tmp_path,
                                                     monkeypatch):
    from act_lora_fast.train.compare import run

    out = tmp_path / "cmp"
    shutil.copytree(interrupted_then_resumed["out"], out)
    kept = _compare_json(out)
    shutil.rmtree(out / "all")
    monkeypatch.setattr(run, "train", interrupted_then_resumed["patch_train"])
    trained = interrupted_then_resumed["trained"]
    count = len(trained)
    assert cli_main(_argv(tiny_model, sst2_dir, out, "--resume")) == 0
    assert trained[count:] == ["all"]  # activation@50% kept, the deleted all-layer run trained again
    assert json.loads((out / "all" / "report.json").read_text())["status"] == "completed"
    assert _compare_json(out)["variants"][1]["runs"] == kept["variants"][1]["runs"]
    shutil.rmtree(out / "activation-50pct" / "adapter")  # a finished report without its adapter: not kept either
    assert cli_main(_argv(tiny_model, sst2_dir, out, "--resume")) == 0
    assert trained[count + 1:] == ["activation-50pct"]


@pytest.mark.parametrize("content, problem", [
    ("[]", "not a compare.json"),
    ('{"variants": [{"name": "all", "runs": [{"seed": 0, "score": 50.0}]}]}', "runs[0] (all) has no 'layers'"),
    ('{"variants": [{"name": "all", "runs": [{"seed": 0, "layers": [1], "score": 50.0}]}]}',
     "does not record every option"),
    ('{"variants": [7]}', "variants[0] is not a variant"),
    ('{"variants": ', "not valid JSON"),
], ids=["list", "run-without-layers", "older-file", "variant-not-object", "truncated"])
def test_a_malformed_compare_json_is_one_line_naming_it(tmp_path, capsys, unloadable_model, content, problem):
    out = tmp_path / "cmp"
    out.mkdir()
    (out / "compare.json").write_text(content)
    code = cli_main(["compare", "--model", unloadable_model, "--output-dir", str(out), "--resume", *QUICK])
    line = _one_line(capsys)
    assert code == 2 and f"cannot resume from {out / 'compare.json'}: " in line and problem in line, line
