"""Issue 21.2: one run per output folder. A second train, compare, stability or demo into a folder another run
holds is refused at once, in one line naming the process, and touches nothing there (not even with
--overwrite); the lock nests within a process and leaves nothing behind."""
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from act_lora_fast.cli.main import main as cli_main
from act_lora_fast.train.config import TrainConfig
from act_lora_fast.train.lock import LOCK_NAME, FolderInUseError, output_dir_lock

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def held(tmp_path):
    """A folder that another process holds (as a running compare would), with a compare.json in it."""
    out = tmp_path / "busy"
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {ROOT!r})
        from act_lora_fast.train.lock import output_dir_lock
        with output_dir_lock({str(out)!r}):
            open(os.path.join({str(out)!r}, "compare.json"), "w").write("{{}}")
            print("locked", flush=True)
            sys.stdin.read()
    """)
    holder = subprocess.Popen([sys.executable, "-c", script, "compare", "--task", "sst2"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield out, holder
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("argv", [
    ["compare", "--task", "sst2", "--fractions", "0.5", "--baselines", "", "--overwrite", "--output-dir", "{out}"],
    ["compare", "--task", "sst2,rte", "--fractions", "0.5", "--baselines", "", "--output-dir", "{out}"],
    ["train", "--overwrite", "--output-dir", "{out}"],
    ["stability", "--out", "{out}"],
    ["demo", "--output-dir", "{out}"],
], ids=["compare", "compare-two-tasks", "train", "stability", "demo"])
def test_a_second_run_into_a_held_folder_is_refused_naming_the_first(held, argv, capsys, unloadable_model):
    out, holder = held
    code = cli_main([*[a.format(out=out) for a in argv], "--model", unloadable_model])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert "is in use by another run" in lines[0] and f"pid {holder.pid}: -c compare --task sst2" in lines[0]
    assert sorted(os.listdir(out)) == [LOCK_NAME, "compare.json"]  # the first run's files untouched


def test_the_library_entry_points_take_the_lock(held, unloadable_model):
    from act_lora_fast.train.ablation import run_ablation
    from act_lora_fast.train.compare import run_compare
    from act_lora_fast.train.loop import train

    out, holder = held
    config = TrainConfig(model=unloadable_model, output_dir=str(out), overwrite=True)
    with pytest.raises(FolderInUseError, match=f"output_dir {out} is in use by another run .pid {holder.pid}"):
        train(config)
    with pytest.raises(FolderInUseError, match="in use"):
        run_compare(TrainConfig(model=unloadable_model), fractions=(0.5,), baselines=(), output_dir=str(out))
    with pytest.raises(FolderInUseError, match="in use"):
        run_ablation(TrainConfig(model=unloadable_model), output_dir=str(out))
    holder.stdin.close()  # the first run ends: its lock file goes with it, and the folder is free
    holder.wait(timeout=60)
    assert sorted(os.listdir(out)) == ["compare.json"]
    with output_dir_lock(out):
        assert os.path.exists(out / LOCK_NAME)


def test_a_killed_runs_lock_is_released(held):
    out, holder = held
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=60)
    assert os.path.exists(out / LOCK_NAME)  # left behind by the kill, but no longer locked
    with output_dir_lock(out):
        pass
    assert not os.path.exists(out / LOCK_NAME)


def test_the_lock_nests_and_a_failed_run_leaves_no_folder(tmp_path):
    out = tmp_path / "new"
    with output_dir_lock(out):
        with output_dir_lock(str(out) + "/"):  # the same folder, spelled otherwise: this process holds it
            assert os.listdir(out) == [LOCK_NAME]
        assert os.listdir(out) == [LOCK_NAME]
    assert os.listdir(out) == []  # released: the lock file is gone, the folder (the run made) stays
    with pytest.raises(RuntimeError, match="boom"):
        with output_dir_lock(tmp_path / "failed"):
            raise RuntimeError("boom")
    assert not (tmp_path / "failed").exists()  # a run that failed before writing anything leaves nothing
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        with output_dir_lock(tmp_path / "f"):
            pass
