"""benchmarks/gpu_check.sh in its CPU smoke mode (Triton's interpreter, tiny sizes): the script itself works.

Every section must print its SUMMARY line and leave its log and JSON in $OUT; a section that runs past its
timeout must still say so, and the later sections must still run.
"""
import json
import os
import pathlib
import shutil
import subprocess

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.sh"
SECTIONS = ("headline", "correctness", "e2e", "backend_table")

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and coreutils' timeout")


def run_check(out, **env):
    full_env = {**os.environ, "GPU_CHECK_CPU_SMOKE": "1", "OUT": str(out), **env}
    full_env.pop("TRITON_INTERPRET", None)  # the script sets it itself
    return subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=full_env, timeout=300)


def test_every_section_prints_its_summary_and_writes_its_files(tmp_path):
    run = run_check(tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    summaries = (tmp_path / "SUMMARY.txt").read_text().splitlines()
    for name in SECTIONS:
        assert any(line.startswith(f"SUMMARY {name} PASS") for line in summaries), (name, summaries)
        assert f"SUMMARY {name}" in run.stdout
        assert (tmp_path / f"{name}.log").is_file()
    headline = json.loads((tmp_path / "headline.json").read_text())
    assert [row["shape"] for row in headline["shapes"]] == [[128, 64, 96, 8], [67, 40, 24, 4]]
    assert {"floor", "ours[triton]", "ours[torch]", "peft"} <= set(headline["shapes"][0]["ms"])
    assert "ours[triton]/floor" in headline["shapes"][0]["predicted"]  # the roofline beside the measurement
    table = json.loads((tmp_path / "backend_table.json").read_text())
    assert table["format"] == "act_lora_fast.backend_table/1"
    assert [(e["tokens"], e["in"], e["out"], e["r"]) for e in table["entries"]] == [(128, 64, 96, 8), (67, 40, 24, 4)]
    assert all(e["dtype"] == "bfloat16" and e["best"] in ("triton", "torch") for e in table["entries"])
    e2e = json.loads((tmp_path / "e2e.json").read_text())
    assert [m["model"] for m in e2e] == ["bert-large-random", "llama-1b-random"]
    assert all({"ours[triton]", "ours[torch]", "peft", "floor"} <= set(m["rows"]) for m in e2e)


def test_a_section_past_its_timeout_still_reports_and_the_rest_runs(tmp_path):
    run = run_check(tmp_path, GPU_CHECK_SECTIONS="headline,backend_table", GPU_CHECK_T_HEADLINE="1")
    assert run.returncode != 0
    summaries = (tmp_path / "SUMMARY.txt").read_text().splitlines()
    assert summaries[0].startswith("SUMMARY headline TIMEOUT after 1s"), summaries
    assert summaries[1:3] == ["SUMMARY correctness SKIPPED (not in GPU_CHECK_SECTIONS)",
                              "SUMMARY e2e SKIPPED (not in GPU_CHECK_SECTIONS)"]
    assert summaries[3].startswith("SUMMARY backend_table FAILED"), summaries  # no headline.json to read
