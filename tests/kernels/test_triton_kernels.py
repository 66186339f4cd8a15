"""Triton LoRA kernels vs the float64 textbook reference (CPU through TRITON_INTERPRET=1, or CUDA)."""
import os

import pytest
import torch

from act_lora_fast.kernels.reference import lora_linear_reference, row_sq_norms_reference, update_sums_reference
from act_lora_fast.kernels.triton import autograd as TA
from act_lora_fast.kernels.triton import utils
from act_lora_fast.kernels.triton.backward import lora_backward
from act_lora_fast.kernels.triton.forward import dropout_mask, lora_forward
from act_lora_fast.kernels.triton.utils import check_triton_device, interpreter_works_with_numpy, triton_available
from tests.numerics import KERNEL_DTYPES, KERNEL_RTOL, NORM_RTOL, rel_err

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

FP32_RTOL, FP16_RTOL, BF16_RTOL = (KERNEL_RTOL[d] for d in (torch.float32, torch.float16, torch.bfloat16))
DTYPES = KERNEL_DTYPES
SCALING = 0.75


def make_inputs(T, K, N, r, dtype, bias, seed=0, origin_3d=None):
    """Fresh random inputs (B random too: the zero init of real LoRA would hide expand bugs)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(dtype).to(DEVICE)

    x = rnd(*origin_3d).reshape(-1, K) if origin_3d else rnd(T, K)
    assert x.shape == (T, K)
    W = rnd(N, K, scale=K ** -0.5)
    b = rnd(N) if bias else None
    A = rnd(r, K, scale=K ** -0.5) if r else None
    B = rnd(N, r) if r else None
    dy = rnd(T, N)
    return x, W, b, A, B, dy


def reference(x, W, b, A, B, dy, s, mask=None):
    """float64 autograd through the project's textbook formula: (y, rowsq, (dx, dA, dB))."""
    def leaf(t):
        return t.detach().double().cpu().requires_grad_(True) if t is not None else None

    x64, A64, B64 = leaf(x), leaf(A), leaf(B)
    cpu64 = lambda t: t.double().cpu() if t is not None else None  # noqa: E731
    y = lora_linear_reference(x64, cpu64(W), cpu64(b), A64, B64, s, keep_mask=cpu64(mask))
    y.backward(dy.double().cpu())
    grads = tuple(t.grad if t is not None else None for t in (x64, A64, B64))
    return y.detach(), row_sq_norms_reference(x.cpu()), grads


def run_autograd(x, W, b, A, B, dy, s, p=0.0, seed=0, compute_rowsq=True):
    x = x.detach().requires_grad_(True)
    A = A.detach().requires_grad_(True)
    B = B.detach().requires_grad_(True)
    y, rowsq = TA.triton_lora_linear(x, W, b, A, B, s, dropout_p=p, seed=seed, compute_rowsq=compute_rowsq)
    y.backward(dy)
    return y.detach(), rowsq, (x.grad, A.grad, B.grad)


def check_all(out, ref, rtol):
    (y, rowsq, grads), (y_r, rowsq_r, grads_r) = out, ref
    assert y.shape == y_r.shape
    assert rel_err(y, y_r) < rtol, "y"
    assert rowsq.dtype == torch.float32
    assert rel_err(rowsq, rowsq_r) < FP32_RTOL, "rowsq"  # fp32 sums of the exact input values
    for name, g, g_r in zip(("dx", "dA", "dB"), grads, grads_r):
        assert g is not None and g.shape == g_r.shape, name
        assert rel_err(g, g_r) < rtol, name


# (T, K_in, N_out, r, 3-D origin of x). Large ranks get a small T to keep the interpreter fast.
SHAPES = [
    pytest.param(2 * 128, 512, 512, 8, None, id="256x512x512-r8"),
    pytest.param(5 * 123, 123, 123, 1, (5, 123, 123), id="5x123x123-r1"),
    pytest.param(5 * 123, 123, 123, 16, (5, 123, 123), id="5x123x123-r16"),
    pytest.param(2 * 32, 256, 192, 64, (2, 32, 256), id="64x256x192-r64"),
    pytest.param(33, 97, 65, 4, None, id="33x97x65-r4"),
]


@pytest.mark.parametrize("T, K, N, r, origin", SHAPES)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("dtype, rtol", DTYPES)
def test_lora_forward_backward(T, K, N, r, origin, bias, dtype, rtol):
    x, W, b, A, B, dy = make_inputs(T, K, N, r, dtype, bias, origin_3d=origin)
    out = run_autograd(x, W, b, A, B, dy, SCALING)
    assert out[0].dtype == dtype and out[2][0].dtype == dtype
    check_all(out, reference(x, W, b, A, B, dy, SCALING), rtol)


@pytest.mark.skipif(DEVICE == "cuda", reason="interpreter-only: the GPU always runs this path")
def test_native_16bit_dot_path_fp16(monkeypatch):
    """Run the GPU's 16-bit-operand dot path (casts of fp32 xa/dyB to the input dtype) in the
    interpreter; only fp16 -- the interpreter's bf16 dots are wrong."""
    monkeypatch.setattr(utils, "INTERPRETER_F32_DOTS", False)
    T, K, N, r, p, seed = 70, 96, 80, 8, 0.25, 21
    x, W, b, A, B, dy = make_inputs(T, K, N, r, torch.float16, True, seed=3)
    mask = dropout_mask((T, K), p, seed, DEVICE)
    out = run_autograd(x, W, b, A, B, dy, SCALING, p=p, seed=seed)
    check_all(out, reference(x, W, b, A, B, dy, SCALING, mask=mask), FP16_RTOL)


@pytest.mark.parametrize("r", [2, 128])
def test_rank_extremes_fp32(r):
    x, W, b, A, B, dy = make_inputs(19, 45, 37, r, torch.float32, True, seed=r)
    check_all(run_autograd(x, W, b, A, B, dy, SCALING), reference(x, W, b, A, B, dy, SCALING), FP32_RTOL)


@pytest.mark.parametrize("layout", ["strided", "transposed"])
@pytest.mark.parametrize("dtype, rtol", [DTYPES[0], DTYPES[2]])
def test_non_contiguous(layout, dtype, rtol):
    T, K, N, r = 70, 96, 80, 8
    _, W, b, A, B, dy = make_inputs(T, K, N, r, dtype, True, seed=3)
    big = torch.randn(T, 2 * K, generator=torch.Generator().manual_seed(4)).to(dtype).to(DEVICE)
    x = big[:, ::2] if layout == "strided" else big[:, :K].t().contiguous().t()
    dy_nc = torch.stack([dy, -dy], dim=2).reshape(T, 2 * N)[:, ::2]  # same values, column stride 2
    assert not x.is_contiguous() and not dy_nc.is_contiguous()
    check_all(run_autograd(x, W, b, A, B, dy_nc, SCALING), reference(x, W, b, A, B, dy, SCALING), rtol)


@pytest.mark.parametrize("dtype, rtol", [DTYPES[0], DTYPES[2]])
@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_uses_dropout_mask(p, dtype, rtol):
    T, K, N, r, seed = 150, 72, 48, 8, 1234
    x, W, b, A, B, dy = make_inputs(T, K, N, r, dtype, True, seed=7)
    mask = dropout_mask((T, K), p, seed, DEVICE)
    # The same mask must be used by forward (y, xa) and regenerated by backward (dx, dA, dB).
    out = run_autograd(x, W, b, A, B, dy, SCALING, p=p, seed=seed)
    check_all(out, reference(x, W, b, A, B, dy, SCALING, mask=mask), rtol)
    # ... and a different seed gives a different result.
    y_other = run_autograd(x, W, b, A, B, dy, SCALING, p=p, seed=seed + 1)[0]
    assert rel_err(y_other, out[0]) > 10 * rtol


def test_dropout_mask_properties():
    p, shape = 0.3, (257, 131)
    m = dropout_mask(shape, p, 42, DEVICE)
    assert m.shape == shape and m.dtype == torch.float32
    assert torch.all((m == 0) | torch.isclose(m, torch.full_like(m, 1 / (1 - p))))
    assert abs((m > 0).float().mean().item() - (1 - p)) < 0.02
    assert torch.equal(m, dropout_mask(shape, p, 42, DEVICE))
    assert not torch.equal(m, dropout_mask(shape, p, 43, DEVICE))
    # Offsets are global element indices: a sub-block of rows is a prefix of the full mask.
    assert torch.equal(dropout_mask((100, 131), p, 42, DEVICE), m[:100])
    assert torch.equal(dropout_mask(shape, 0.0, 42, DEVICE), torch.ones(shape, device=DEVICE))


def test_p_zero_is_no_dropout():
    x, W, b, A, B, dy = make_inputs(40, 64, 48, 4, torch.float32, True, seed=9)
    fwd0 = lora_forward(x, weight=W, bias=b, lora_A=A, lora_B=B, scaling=SCALING)
    fwd1 = lora_forward(x, weight=W, bias=b, lora_A=A, lora_B=B, scaling=SCALING, dropout_p=0.0, seed=999)
    assert all(torch.equal(u, v) for u, v in zip(fwd0, fwd1))
    common = dict(weight=W, x=x, lora_A=A, lora_B=B, xa=fwd0.xa, scaling=SCALING, needs_dA=True, needs_dB=True)
    g0 = lora_backward(dy, **common, dropout_p=0.0, seed=0)
    g1 = lora_backward(dy, **common, dropout_p=0.0, seed=999)
    assert all(torch.equal(u, v) for u, v in zip(g0[:3], g1[:3]))


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("dtype, rtol", [DTYPES[0], DTYPES[2]])
def test_probe_mode(bias, dtype, rtol):
    T, K, N = 3 * 41, 100, 130  # several column blocks: only pid_n == 0 may write rowsq
    x, W, b, _, _, dy = make_inputs(T, K, N, 0, dtype, bias, seed=11)
    xg = x.detach().requires_grad_(True)
    y, rowsq = TA.triton_probe_linear(xg, W, b)
    assert not rowsq.requires_grad
    y.backward(dy)
    y_r, rowsq_r, (dx_r, _, _) = reference(x, W, b, None, None, dy, SCALING)
    assert rel_err(y, y_r) < rtol
    assert rel_err(rowsq, rowsq_r) < FP32_RTOL
    assert rel_err(xg.grad, dx_r) < rtol
    # lora_forward without adapters is the same probe path.
    y2, xa2, rs2 = lora_forward(x, weight=W, bias=b, compute_rowsq=False)
    assert xa2 is None and rs2 is None and torch.equal(y2, y.detach())


def test_autograd_respects_needs_input_grad():
    x, W, b, A, B, dy = make_inputs(50, 40, 30, 4, torch.float32, True, seed=5)
    _, _, (dx_r, dA_r, dB_r) = reference(x, W, b, A, B, dy, SCALING)
    # Only B trains, x is a leaf without grad: no dx, no dA, x not needed.
    Bg = B.detach().requires_grad_(True)
    y, rowsq = TA.triton_lora_linear(x, W, b, A, Bg, SCALING, compute_rowsq=False)
    assert rowsq.numel() == 0 and not rowsq.requires_grad
    y.backward(dy)
    assert rel_err(Bg.grad, dB_r) < FP32_RTOL
    # Only A trains.
    Ag = A.detach().requires_grad_(True)
    y, _ = TA.TritonLoRAFunction.apply(x, W, b, Ag, B, SCALING, 0.0, 0, True)
    (y * dy).sum().backward()
    assert rel_err(Ag.grad, dA_r) < FP32_RTOL
    # dy with zero strides (from .sum()) is handled too.
    xg = x.detach().requires_grad_(True)
    TA.triton_lora_linear(xg, W, b, A, B, SCALING)[0].sum().backward()
    dx_sum = reference(x, W, b, A, B, torch.ones_like(dy), SCALING)[2][0]
    assert rel_err(xg.grad, dx_sum) < FP32_RTOL


def test_cpu_without_interpreter_raises(request):
    x = torch.randn(4, 8)
    W = torch.randn(6, 8)
    assert triton_available("cpu") == (os.environ.get("TRITON_INTERPRET") == "1")
    request.getfixturevalue("kernels_not_interpreted")
    assert not triton_available("cpu")
    with pytest.raises(RuntimeError, match="backend='triton' needs CUDA tensors or TRITON_INTERPRET=1"):
        check_triton_device(x, W)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        lora_forward(x, weight=W)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        TA.triton_probe_linear(x, W)


def test_interpreter_numpy_compatibility_rule():
    """Triton < 3.7's interpreter breaks on numpy 2.x; the kernels say so instead of an InterpreterError."""
    assert interpreter_works_with_numpy("3.9.0", "2.4.6")
    assert interpreter_works_with_numpy("3.7.0+git1234", "2.5.2")
    assert interpreter_works_with_numpy("3.6.0", "1.26.4")
    assert not interpreter_works_with_numpy("3.6.0", "2.4.6")
    assert not interpreter_works_with_numpy("3.4.1", "2.0.0")


def test_old_interpreter_with_numpy_2_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(utils, "interpreter_works_with_numpy", lambda: False)
    x = torch.randn(4, 8)
    with pytest.raises(RuntimeError, match="install triton>=3.7"):
        check_triton_device(x)


@pytest.mark.parametrize("probe", [False, True], ids=["lora", "probe"])
def test_trainable_base_weight_and_bias_match_float64(probe):
    x, W, b, A, B, dy = make_inputs(70, 96, 80, 0 if probe else 8, torch.float32, True, seed=12)
    Wg, bg = W.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    if probe:
        y, _ = TA.triton_probe_linear(x, Wg, bg)
    else:
        y, _ = TA.triton_lora_linear(x, Wg, bg, A, B, SCALING, dropout_p=0.2, seed=5)
    y.backward(dy)
    assert rel_err(Wg.grad, dy.double().cpu().t() @ x.double().cpu()) < FP32_RTOL
    assert rel_err(bg.grad, dy.double().cpu().sum(0)) < FP32_RTOL


@pytest.mark.parametrize("needs", ["all", "B-only", "probe-dx", "probe-no-dx"])
@pytest.mark.parametrize("dtype, rtol", [DTYPES[0], DTYPES[2]])
def test_update_sums_reduced_in_the_backward_match_float64(needs, dtype, rtol):
    """Σ_t w_t·‖x_t‖·‖dy_t‖ from the forward's Σx² and the Σdy² of the backward's row pass (dy·B kernel, or
    the dx GEMM in probe mode, or a row pass of its own when nothing else reads whole rows of dy)."""
    probe = needs.startswith("probe")
    T, K, N = 3 * 41, 100, 130  # several column blocks: only pid_n == 0 may write the dx GEMM's row sums
    x, W, b, A, B, dy = make_inputs(T, K, N, 0 if probe else 8, dtype, True, seed=14)
    mask = (torch.rand(T, generator=torch.Generator().manual_seed(2)) > 0.3).to(DEVICE)
    sink = torch.zeros(2, dtype=torch.float64, device=DEVICE, requires_grad=True)
    xg = x.detach().requires_grad_(needs in ("all", "probe-dx"))
    if probe:
        y, _ = TA.triton_probe_linear(xg, W, b, update_sink=sink, token_mask=mask)
    else:
        y, _ = TA.triton_lora_linear(xg, W, b, A.requires_grad_(needs == "all"), B.requires_grad_(), SCALING,
                                     compute_rowsq=False, update_sink=sink, token_mask=mask)
    y.backward(dy)
    assert rel_err(sink.grad, update_sums_reference(x, dy, mask)) < NORM_RTOL
    assert sink.grad[1].item() == mask.sum().item()


def test_backward_returns_dy_row_norms_with_every_grad_subset():
    x, W, b, A, B, dy = make_inputs(50, 40, 70, 4, torch.float32, True, seed=15)
    fwd = lora_forward(x, weight=W, bias=b, lora_A=A, lora_B=B, scaling=SCALING)
    want = dy.double().cpu().square().sum(1)
    for needs_dx, needs_dA, needs_dB in [(True, True, True), (False, False, True), (False, True, False)]:
        grads = lora_backward(dy, weight=W, x=x, lora_A=A, lora_B=B, xa=fwd.xa, scaling=SCALING, needs_dx=needs_dx,
                              needs_dA=needs_dA, needs_dB=needs_dB, compute_dy_rowsq=True)
        assert rel_err(grads.dy_rowsq, want) < FP32_RTOL
        assert (grads.dx is None) != needs_dx and (grads.dA is None) != needs_dA and (grads.dB is None) != needs_dB


def test_non_contiguous_bias_is_read_through_its_stride():
    x, W, b, A, B, dy = make_inputs(40, 64, 48, 4, torch.float32, True, seed=16)
    strided = torch.stack([b, -b], dim=1).reshape(-1)[::2]  # same values, stride 2
    assert not strided.is_contiguous() and torch.equal(strided, b)
    y, _ = TA.triton_lora_linear(x, W, strided, A, B, SCALING)
    assert rel_err(y, reference(x, W, b, A, B, dy, SCALING)[0]) < FP32_RTOL


def test_tuner_benchmarks_once_per_m_bucket_and_pins_with_the_env_var(monkeypatch):
    """Token counts in one power-of-two bucket share a tuned config; ACT_LORA_TRITON_AUTOTUNE=0 runs the
    first config the kernel's own prune keeps, without benchmarking."""
    configs = utils.GEMM_CONFIGS_16 + utils.GEMM_CONFIGS_32
    timings = {c: float(i) for i, c in enumerate(reversed(configs))}  # the last config is the fastest
    benched = []

    def fake_bench(fn, **_):
        benched.append(fn.args[0])
        return timings[fn.args[0]]

    monkeypatch.setattr(utils.triton.testing, "do_bench", fake_bench)
    tuner = utils.ConfigTuner(configs, lambda cs, *, F32_DOT: [c for c in cs if (c in utils.GEMM_CONFIGS_32) == F32_DOT])
    launch = lambda config: None  # noqa: E731
    monkeypatch.delenv(utils.AUTOTUNE_ENV_VAR, raising=False)
    for tokens in (3000, 4096, 2049):
        picked = tuner.pick((utils.m_bucket(tokens), 512), launch, F32_DOT=False)
    assert utils.m_bucket(3000) == utils.m_bucket(2049) == 4096
    assert picked == utils.GEMM_CONFIGS_16[-1] and sorted(map(id, benched)) == sorted(map(id, utils.GEMM_CONFIGS_16))
    tuner.pick((utils.m_bucket(5000), 512), launch, F32_DOT=False)
    assert len(benched) == 2 * len(utils.GEMM_CONFIGS_16)  # a new bucket tunes again
    monkeypatch.setenv(utils.AUTOTUNE_ENV_VAR, "0")
    assert tuner.pick((utils.m_bucket(3000), 512), launch, F32_DOT=False) == utils.GEMM_CONFIGS_16[0]
    assert tuner.pick((utils.m_bucket(3000), 512), launch, F32_DOT=True) == utils.GEMM_CONFIGS_32[0]
    assert len(benched) == 2 * len(utils.GEMM_CONFIGS_16)


def test_launch_kwargs_pick_once_per_key_and_carry_flags_and_config(monkeypatch):
    """A repeated shape reuses the call's keyword arguments: no pick, no benchmark, no dict building."""
    monkeypatch.setenv(utils.AUTOTUNE_ENV_VAR, "0")
    tuner = utils.ConfigTuner(utils.GEMM_CONFIGS_16 + utils.GEMM_CONFIGS_32,
                              lambda cs, *, F32_DOT: [c for c in cs if (c in utils.GEMM_CONFIGS_32) == F32_DOT])
    picks = []
    monkeypatch.setattr(tuner, "pick", lambda *a, **k: picks.append(k) or utils.ConfigTuner.pick(tuner, *a, **k))
    launched = []
    first = tuner.launch_kwargs(("k", 1), launched.append, {"HAS_LORA": True}, F32_DOT=True)
    again = tuner.launch_kwargs(("k", 1), launched.append, {"HAS_LORA": True}, F32_DOT=True)
    config = utils.GEMM_CONFIGS_32[0]
    assert first is again and picks == [{"F32_DOT": True}] and not launched  # pinned: nothing benchmarked
    assert first == {"HAS_LORA": True, **config.kwargs, "num_warps": config.num_warps,
                     "num_stages": config.num_stages}


def test_each_gemm_prunes_its_own_configs():
    """The rules that keep every surviving config free of spills in the sm_90 compile check."""
    from act_lora_fast.kernels.triton.backward import prune_dx_configs
    from act_lora_fast.kernels.triton.forward import prune_forward_configs

    everything = utils.GEMM_CONFIGS_16 + utils.GEMM_CONFIGS_32
    per_thread = lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] // (32 * c.num_warps)  # noqa: E731
    assert prune_forward_configs(everything, F32_DOT=False, BLOCK_R=16) == utils.GEMM_CONFIGS_16  # never drops
    assert prune_forward_configs(everything, F32_DOT=True, BLOCK_R=32) == utils.GEMM_CONFIGS_32
    wide = prune_forward_configs(everything, F32_DOT=False, BLOCK_R=64)
    assert wide and all(per_thread(c) <= 64 for c in wide) and len(wide) < len(utils.GEMM_CONFIGS_16)
    assert prune_dx_configs(everything, F32_DOT=False, HAS_DROPOUT=False, BLOCK_R=16) == utils.GEMM_CONFIGS_16
    with_dropout = prune_dx_configs(everything, F32_DOT=False, HAS_DROPOUT=True, BLOCK_R=16)
    assert with_dropout and all(per_thread(c) <= 64 for c in with_dropout)
    both = prune_dx_configs(everything, F32_DOT=False, HAS_DROPOUT=True, BLOCK_R=64)
    assert both and all(per_thread(c) <= 64 and c.num_warps == 8 for c in both)
    # The pinned default (ACT_LORA_TRITON_AUTOTUNE=0) survives every 16-bit prune.
    assert utils.GEMM_CONFIGS_16[0] in wide and utils.GEMM_CONFIGS_16[0] in both


@pytest.mark.parametrize("r", [8, 64], ids=["fused-dy-pass", "separate-row-pass"])
def test_backward_is_deterministic_and_matches_with_either_dy_pass(r):
    """At small ranks dy·B, dB and Σdy² come from one read of dy (partials per column block and per row
    split), at larger ranks from two; both give the float64 gradients, bit-identically on every run."""
    T, K, N = 3 * 41, 100, 130  # several column blocks and row splits
    x, W, b, A, B, dy = make_inputs(T, K, N, r, torch.float32, True, seed=17)
    fwd = lora_forward(x, weight=W, bias=b, lora_A=A, lora_B=B, scaling=SCALING)
    kwargs = dict(weight=W, x=x, lora_A=A, lora_B=B, xa=fwd.xa, scaling=SCALING, needs_dA=True, needs_dB=True,
                  compute_dy_rowsq=True)
    first, second = lora_backward(dy, **kwargs), lora_backward(dy, **kwargs)
    assert all(torch.equal(u, v) for u, v in zip(first, second))
    _, _, (dx_r, dA_r, dB_r) = reference(x, W, b, A, B, dy, SCALING)
    for name, got, want in zip(("dx", "dA", "dB"), first[:3], (dx_r, dA_r, dB_r)):
        assert rel_err(got, want) < FP32_RTOL, name
    assert rel_err(first.dy_rowsq, dy.double().cpu().square().sum(1)) < FP32_RTOL


def test_device_guard_switches_only_to_another_gpu(monkeypatch):
    """Launches go to the tensors' GPU; a context switch (a few µs) only when it is not the current one."""
    class OnGpu:
        is_cuda = True

        def __init__(self, index):
            self.index, self.device = index, f"cuda:{index}"

        def get_device(self):
            return self.index

    switched = []
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device", lambda device: switched.append(device) or "switch")
    assert utils.device_guard(OnGpu(0)) is utils._NO_GUARD
    assert utils.device_guard(OnGpu(1)) == "switch" and switched == ["cuda:1"]
    assert utils.device_guard(torch.zeros(1)) is utils._NO_GUARD and switched == ["cuda:1"]


@pytest.mark.parametrize("probe", [False, True], ids=["lora", "probe"])
@pytest.mark.parametrize("no_grad_mode", [torch.no_grad, torch.inference_mode])
def test_forward_without_autograd_matches(probe, no_grad_mode):
    """Under no_grad / inference_mode lora_linear launches the kernels without an autograd Function: the
    same y and Σx² bit for bit, nothing to backprop."""
    from act_lora_fast.functional import lora_linear

    x, W, b, A, B, _ = make_inputs(3 * 41, 100, 70, 0 if probe else 8, torch.float32, True, seed=5)
    x = x.reshape(3, 41, 100)
    if not probe:
        A.requires_grad_()
    with no_grad_mode():
        y_fast, rowsq_fast = lora_linear(x, W, b, A, B, SCALING, backend="triton", compute_rowsq=True)
    x.requires_grad_()
    y, rowsq = lora_linear(x, W, b, A, B, SCALING, backend="triton", compute_rowsq=True)
    assert y.requires_grad and not y_fast.requires_grad
    assert y_fast.shape == y.shape and rowsq_fast.shape == rowsq.shape == x.shape[:-1]
    assert torch.equal(y_fast, y.detach()) and torch.equal(rowsq_fast, rowsq)
