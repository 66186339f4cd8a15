"""`lora_linear`, the functional entry point: bad inputs fail clearly and alike on every backend."""
import pytest
import torch

from act_lora_fast import lora_linear

BACKENDS = ["torch", "triton", "reference"]  # conftest sets TRITON_INTERPRET=1: triton runs on CPU tensors


def good_inputs():
    gen = torch.Generator().manual_seed(0)
    x, weight = torch.randn(5, 9, generator=gen), torch.randn(7, 9, generator=gen)
    bias, lora_A, lora_B = torch.randn(7, generator=gen), torch.randn(3, 9, generator=gen), torch.randn(7, 3, generator=gen)
    return dict(x=x, weight=weight, bias=bias, lora_A=lora_A, lora_B=lora_B)


BAD = {  # name: (replacements, expected exception, words the message must contain)
    "x last dim": (dict(x=torch.randn(5, 8)), ValueError, "in_features=9"),
    "x a scalar": (dict(x=torch.tensor(1.0)), ValueError, "in_features=9"),
    "x a list": (dict(x=[[1.0] * 9]), TypeError, "x must be a torch.Tensor"),
    "x integer": (dict(x=torch.ones(5, 9, dtype=torch.int64)), TypeError, "x must be a floating-point"),
    "x half, weights float": (dict(x=torch.randn(5, 9).half()), TypeError, "share one dtype"),
    "x on another device": (dict(x=torch.randn(5, 9, device="meta")), ValueError, "on one device"),
    "weight 1-D": (dict(weight=torch.randn(9)), ValueError, "weight must be 2-D"),
    "bias wrong size": (dict(bias=torch.randn(6)), ValueError, "bias must have shape (7,)"),
    "lora_A wrong width": (dict(lora_A=torch.randn(3, 8)), ValueError, "lora_A must have shape (r, 9)"),
    "lora_A rank 0": (dict(lora_A=torch.randn(0, 9), lora_B=torch.randn(7, 0)), ValueError, "r >= 1"),
    "lora_B wrong rank": (dict(lora_B=torch.randn(7, 4)), ValueError, "lora_B must have shape (7, 3)"),
    "lora_B wrong out": (dict(lora_B=torch.randn(6, 3)), ValueError, "lora_B must have shape (7, 3)"),
    "lora_B missing": (dict(lora_B=None), ValueError, "both be given"),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_names_the_problem(backend, case):
    replacements, error, words = BAD[case]
    inputs = {**good_inputs(), **replacements}
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
        lora_linear(inputs["x"], inputs["weight"], inputs["bias"], inputs["lora_A"], inputs["lora_B"], 2.0,
                    backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_dropout_out_of_range(backend):
    inputs = good_inputs()
    with pytest.raises(ValueError, match="dropout_p must be in"):
        lora_linear(*inputs.values(), 2.0, dropout_p=1.0, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_good_input_agrees_across_backends(backend):
    """The checks reject nothing valid: 3-D input, no bias, probe mode (no adapter)."""
    inputs = good_inputs()
    x3 = inputs["x"].reshape(1, 5, 9)
    y, rowsq = lora_linear(x3, inputs["weight"], None, inputs["lora_A"], inputs["lora_B"], 2.0, backend=backend,
                           compute_rowsq=True)
    expected = x3 @ inputs["weight"].t() + 2.0 * (x3 @ inputs["lora_A"].t()) @ inputs["lora_B"].t()
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rowsq, x3.pow(2).sum(-1), rtol=1e-5, atol=1e-5)
    y_probe, _ = lora_linear(x3, inputs["weight"], inputs["bias"], None, None, 0.0, backend=backend)
    torch.testing.assert_close(y_probe, torch.nn.functional.linear(x3, inputs["weight"], inputs["bias"]))


def _write_table(path, **fields):
    import json

    from act_lora_fast.functional import BACKEND_TABLE_FORMAT

    path.write_text(json.dumps({"format": BACKEND_TABLE_FORMAT, "device": "NVIDIA H200", "entries": [], **fields}))
    return path


def test_auto_on_cuda_picks_the_nearest_table_entry_of_the_same_dtype(tmp_path, monkeypatch):
    from act_lora_fast.functional import BACKEND_TABLE_ENV_VAR, resolve_backend

    cuda = torch.device("cuda")  # resolving only reads the device type: no GPU needed
    entries = [dict(dtype="bfloat16", tokens=8192, **{"in": 4096, "out": 4096}, r=16, best="triton"),
               dict(dtype="bfloat16", tokens=512, **{"in": 768, "out": 768}, r=8, best="torch"),
               dict(dtype="float32", tokens=8192, **{"in": 4096, "out": 4096}, r=16, best="torch")]
    monkeypatch.setenv(BACKEND_TABLE_ENV_VAR, str(_write_table(tmp_path / "table.json", entries=entries)))
    pick = lambda dtype, shape: resolve_backend("auto", cuda, dtype=dtype, shape=shape)  # noqa: E731
    assert pick(torch.bfloat16, (4096, 4096, 4096, 16)) == "triton"
    assert pick(torch.bfloat16, (1024, 1024, 1024, 8)) == "torch"
    assert pick(torch.float32, (16, 64, 64, 1)) == "torch"  # the only fp32 entry, however far
    assert pick(torch.float16, (4096, 4096, 4096, 16)) == "triton"  # no fp16 entry: the documented fallback
    assert resolve_backend("torch", cuda, dtype=torch.bfloat16, shape=(4096, 4096, 4096, 16)) == "torch"
    monkeypatch.delenv(BACKEND_TABLE_ENV_VAR)
    assert pick(torch.bfloat16, (1024, 1024, 1024, 8)) == "triton"  # no table
    assert resolve_backend("auto", torch.device("cpu")) == "torch"


def test_a_backend_table_is_read_once_per_process(tmp_path, monkeypatch):
    """`auto` asks on every CUDA call: the answer for a (table, dtype, shape) is kept, no file access per call."""
    from act_lora_fast.functional import BACKEND_TABLE_ENV_VAR, resolve_backend

    entries = [dict(dtype="bfloat16", tokens=512, **{"in": 768, "out": 768}, r=8, best="torch")]
    path = _write_table(tmp_path / "table.json", entries=entries)
    monkeypatch.setenv(BACKEND_TABLE_ENV_VAR, str(path))
    cuda, shape = torch.device("cuda"), (512, 768, 768, 8)
    assert resolve_backend("auto", cuda, dtype=torch.bfloat16, shape=shape) == "torch"
    path.unlink()
    assert resolve_backend("auto", cuda, dtype=torch.bfloat16, shape=shape) == "torch"


@pytest.mark.parametrize("overrides, words", [
    (dict(format="something/2"), "'format' must be"),
    (dict(entries={"a": 1}), "'entries' must be a list"),
    (dict(entries=[dict(dtype="bfloat16", tokens=8, r=1, best="triton")]), "entry 0 must hold"),
    (dict(entries=[dict(dtype="bfloat16", tokens=8, r=1, best="cublas", **{"in": 8, "out": 8})]), "entry 0"),
    ({}, "cannot be read"),
])
def test_a_malformed_backend_table_is_named(tmp_path, monkeypatch, overrides, words):
    from act_lora_fast.functional import BACKEND_TABLE_ENV_VAR, resolve_backend

    path = _write_table(tmp_path / "bad.json", **overrides) if overrides else tmp_path / "missing.json"
    monkeypatch.setenv(BACKEND_TABLE_ENV_VAR, str(path))
    with pytest.raises(ValueError, match=f"backend table {path}: {words}"):
        resolve_backend("auto", torch.device("cuda"), dtype=torch.bfloat16, shape=(8, 8, 8, 1))


@pytest.mark.skipif(torch.cuda.is_available(), reason="the kernels are built for the GPU there")
def test_triton_on_cpu_follows_how_the_kernels_were_built_not_the_variable_now(monkeypatch):
    """Triton decided at import that the kernels run in its interpreter; unsetting TRITON_INTERPRET afterwards
    does not stop them (only kernels built for the GPU refuse CPU tensors, see kernels_not_interpreted)."""
    from act_lora_fast.functional import resolve_backend

    g = torch.Generator().manual_seed(4)
    x, W, b, A, B = (torch.randn(*shape, generator=g) for shape in [(7, 12), (10, 12), (10,), (4, 12), (10, 4)])
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert resolve_backend("triton", torch.device("cpu")) == "triton"
    y, _ = lora_linear(x, W, b, A, B, 0.5, backend="triton")
    torch.testing.assert_close(y, lora_linear(x, W, b, A, B, 0.5, backend="torch")[0], rtol=1e-5, atol=1e-5)
