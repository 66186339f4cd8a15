"""benchmarks/roofline.py: launch FLOPs and bytes against hand-computed values, sane ratios, clear errors."""
import importlib.util
import json
import pathlib
import subprocess
import sys

import pytest

ROOFLINE_PATH = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "roofline.py"
_spec = importlib.util.spec_from_file_location("roofline", ROOFLINE_PATH)
roofline = importlib.util.module_from_spec(_spec)
sys.modules["roofline"] = roofline  # dataclasses resolve their module by name
_spec.loader.exec_module(roofline)

# An odd little shape: every term of the hand counts below is distinct.
T, K, N, R = 100, 30, 20, 3


def launches(pred, contender):
    return {row["name"]: row for row in pred["contenders"][contender]["launches"]}


def test_floor_flops_and_bytes_by_hand():
    pred = roofline.predict(T, K, N, R, "bf16", bias=True)
    rows = launches(pred, "floor")
    fwd, bwd = rows["addmm y = x·Wᵀ + b"], rows["mm dx = dy·W"]
    assert fwd["flops"] == 2 * 100 * 20 * 30 == 120_000
    assert fwd["bytes"] == (100 * 30 + 20 * 30 + 100 * 20) * 2 + 20 * 2 == 11_240
    assert bwd["flops"] == 120_000
    assert bwd["bytes"] == (100 * 20 + 20 * 30 + 100 * 30) * 2 == 11_200
    assert pred["contenders"]["floor"]["launch_count"] == 2


def test_triton_launches_by_hand():
    pred = roofline.predict(T, K, N, R, "bf16", bias=False)
    rows = launches(pred, "triton")
    assert rows["shrink xa = drop(x)·Aᵀ"]["flops"] == 2 * 100 * 30 * 3 == 18_000
    # x (bf16) + A (bf16) read, xa written in fp32
    assert rows["shrink xa = drop(x)·Aᵀ"]["bytes"] == (3000 + 90) * 2 + 300 * 4
    assert rows["GEMM y = x·Wᵀ + b + s·xa·Bᵀ"]["flops"] == 120_000 + 2 * 100 * 20 * 3
    assert rows["GEMM dx = dy·W + s·(dyB·A)∘m"]["flops"] == 120_000 + 18_000
    # 100 tokens = 2 row blocks of 64 -> two split-T partials of dA (one 64-column block) and of dB
    assert roofline.split_t(100, 1) == 2
    dA = rows["dA partials = s·dyBᵀ·drop(x) (split-T 2)"]
    assert dA["bytes"] == 3000 * 2 + 300 * 4 + 2 * 3 * 30 * 4
    assert "sum dB partials (2)" in rows and "zeros dA" in rows
    # the planned backward reads dy once for dyB and dB and needs no zero-fills
    planned = pred["contenders"]["triton_fused_dy"]
    assert planned["launch_count"] < pred["contenders"]["triton"]["launch_count"]
    assert planned["bytes"] == pytest.approx(pred["contenders"]["triton"]["bytes"] - 2000 * 2, rel=0.05)


def test_peft_flops_by_hand():
    pred = roofline.predict(T, K, N, R, "fp16", bias=False)
    # base forward + dx, lora_A/B in forward, four rank-r GEMMs in backward, scale/add/scale/accumulate
    expected = 4 * T * N * K + 6 * T * K * R + 6 * T * N * R + 3 * T * N + T * K
    assert pred["contenders"]["peft"]["flops"] == expected
    with_dropout = roofline.predict(T, K, N, R, "fp16", bias=False, dropout=0.1)
    assert with_dropout["contenders"]["peft"]["launch_count"] == pred["contenders"]["peft"]["launch_count"] + 2


def test_time_is_the_roofline_of_each_launch():
    pred = roofline.predict(8192, 4096, 4096, 16, "bf16", peaks="datasheet")
    gemm = launches(pred, "floor")["addmm y = x·Wᵀ + b"]
    assert gemm["bound"] == "compute"
    assert gemm["time_us"] == pytest.approx(1e6 * 2 * 8192 * 4096 * 4096 / 989.5e12)
    shrink = launches(pred, "triton")["shrink xa = drop(x)·Aᵀ"]
    assert shrink["bound"] == "memory"
    assert shrink["time_us"] == pytest.approx(1e6 * shrink["bytes"] / 4.8e12)


def test_ratios_are_sane_at_the_headline_shape():
    ratios = roofline.predict(8192, 4096, 4096, 16, "bf16")["ratios"]
    for backend in roofline.BACKENDS:
        assert 1.0 < ratios[f"{backend}/floor"] < ratios["peft/floor"] < 2.0
        assert ratios[f"peft/{backend}"] == pytest.approx(ratios["peft/floor"] / ratios[f"{backend}/floor"])
    assert ratios["triton_fused_dy/floor"] < ratios["triton/floor"]
    slower = roofline.predict(8192, 4096, 4096, 16, "bf16", triton_gemm_efficiency=0.85)["ratios"]
    assert slower["triton/floor"] > ratios["triton/floor"]
    assert slower["torch/floor"] == pytest.approx(ratios["torch/floor"])  # cuBLAS GEMMs: not scaled
    # launch costs hurt the many-launch contenders most at a small shape
    small = roofline.predict(256, 1024, 1024, 16, "bf16", launch_us=5.0)["ratios"]
    assert small["triton/floor"] > roofline.predict(256, 1024, 1024, 16, "bf16")["ratios"]["triton/floor"]


def test_fp32_torch_path_merges_like_the_code():
    assert roofline.merges_on_the_fly(8192, 4096, 4096, "float32", 0.0)
    assert not roofline.merges_on_the_fly(8192, 4096, 4096, "bfloat16", 0.0)
    assert not roofline.merges_on_the_fly(2048, 4096, 4096, "float32", 0.0)
    rows = launches(roofline.predict(8192, 4096, 4096, 16, "fp32"), "torch")
    assert "addmm W' = W + s·B·A" in rows and "addmm_ dx += dyB·A" not in rows


@pytest.mark.parametrize("args, kwargs, error, words", [
    ((0, 30, 20, 3), {}, ValueError, "T must be >= 1"),
    ((100, 30, 20, 1.5), {}, TypeError, "R must be an int"),
    ((100, True, 20, 3), {}, TypeError, "IN must be an int"),
    ((100, 30, 20, 3), {"dtype": "int8"}, ValueError, "dtype must be one of"),
    ((100, 30, 20, 3), {"peaks": "marketing"}, ValueError, "peaks must be one of"),
    ((100, 30, 20, 3), {"dropout": 1.0}, ValueError, "dropout must be in [0, 1)"),
    ((100, 30, 20, 3), {"triton_gemm_efficiency": 0.0}, ValueError, "triton_gemm_efficiency must be in (0"),
    ((100, 30, 20, 3), {"launch_us": -1.0}, ValueError, "launch_us must be in"),
])
def test_bad_input_raises_a_clear_error(args, kwargs, error, words):
    with pytest.raises(error, match=words.replace("(", r"\(").replace("[", r"\[").replace(")", r"\)")):
        roofline.predict(*args, **kwargs)


def test_parse_shape():
    assert roofline.parse_shape("8192,4096,4096,16") == (8192, 4096, 4096, 16)
    for bad in ("1,2,3", "a,b,c,d", "1,2,3,0"):
        with pytest.raises(ValueError, match="four positive ints"):
            roofline.parse_shape(bad)


def test_cli_prints_every_contender_and_writes_json(tmp_path):
    out = tmp_path / "roofline.json"
    run = subprocess.run([sys.executable, str(ROOFLINE_PATH), "--shape", "512,256,384,8", "--dtype", "fp16",
                          "--json", str(out)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    for name in ("floor", "triton", "torch", "peft"):
        assert f"-- {name}:" in run.stdout
    assert "predicted: peft/floor" in run.stdout and "nvidia.com" in run.stdout
    [pred] = json.loads(out.read_text())
    assert pred["shape"] == {"T": 512, "IN": 256, "OUT": 384, "R": 8}
    bad = subprocess.run([sys.executable, str(ROOFLINE_PATH), "--shape", "1,2,3"], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2 and "four positive ints" in bad.stderr


def test_needed_gemm_efficiency_is_consistent():
    pred = roofline.predict(8192, 4096, 4096, 16, "bf16")
    needed = pred["needed_gemm_efficiency"]["triton_fused_dy"]
    tie = needed["to tie hybrid"]
    assert 0.5 < tie < 1.0
    # at exactly that efficiency the planned Triton design and the cuBLAS hybrid take the same time
    at_tie = roofline.predict(8192, 4096, 4096, 16, "bf16", triton_gemm_efficiency=tie)["contenders"]
    assert at_tie["triton_fused_dy"]["time_us"] == pytest.approx(at_tie["hybrid"]["time_us"], rel=1e-9)
    at_target = roofline.predict(8192, 4096, 4096, 16, "bf16", triton_gemm_efficiency=needed["for 1.08x floor"])
    assert at_target["ratios"]["triton_fused_dy/floor"] == pytest.approx(1.08, rel=1e-9)
    # a target below what even perfect kernels reach is reported as out of reach
    assert roofline.predict(8192, 4096, 4096, 16, "bf16", target=1.01)["needed_gemm_efficiency"]["triton"][
        "for 1.01x floor"] is None
