"""benchmarks/host_overhead.py runs end to end on both host paths (a benchmark that silently broke would
leave RESULTS.md's host-overhead figures unreproducible)."""
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def run_script(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "host_overhead.py"), "--iters", "20", *args],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    return dict((name.strip(), float(value)) for name, value in re.findall(r"^  (.+?)\s+([0-9.]+)$", run.stdout,
                                                                            re.MULTILINE))


@pytest.mark.parametrize("args", [("--path", "gpu"), ("--path", "interpreter", "--block", "5")],
                         ids=["gpu-path", "interpreter-path-blocks"])
def test_every_variant_gets_a_positive_time(args):
    times = run_script(*args)
    assert set(times) == {"triton (stubbed kernels)", "torch backend", "nn.Linear (x grad only)"}
    assert all(value > 0 for value in times.values())


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="--baseline archives a commit of this git checkout")
def test_a_baseline_commit_joins_the_rounds():
    times = run_script("--baseline", "HEAD")
    assert {"triton @ HEAD", "torch @ HEAD"} <= set(times) and all(value > 0 for value in times.values())
