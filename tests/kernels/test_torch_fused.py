"""The fused PyTorch path (CPU) against the float64 textbook formula: forward, Σx², every gradient."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from act_lora_fast.functional import dropout_mask, lora_linear
from act_lora_fast.kernels import torch_fused
from act_lora_fast.kernels.reference import lora_linear_reference, row_sq_norms_reference, update_sums_reference
from tests.numerics import NORM_RTOL, rel_err
from tests.numerics import TORCH_RTOL as REL_TOL


def make_inputs(lead_shape, k_in, n_out, r, dtype, bias, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead_shape, k_in, generator=gen)
    weight = torch.randn(n_out, k_in, generator=gen) / k_in**0.5
    b = torch.randn(n_out, generator=gen) if bias else None
    lora_A = torch.randn(r, k_in, generator=gen) / k_in**0.5
    lora_B = torch.randn(n_out, r, generator=gen) / r**0.5  # non-zero B: zeros would hide dA bugs
    dy = torch.randn(*lead_shape, n_out, generator=gen)
    cast = lambda t: None if t is None else t.to(dtype)  # noqa: E731
    return [cast(t) for t in (x, weight, b, lora_A, lora_B, dy)]


def run_with_grads(fn, x, weight, b, lora_A, lora_B, dy):
    x, lora_A, lora_B = (t.detach().clone().requires_grad_() for t in (x, lora_A, lora_B))
    y = fn(x, weight, b, lora_A, lora_B)
    y.backward(dy)
    return y, x.grad, lora_A.grad, lora_B.grad


SHAPES = [((2, 128), 512, 512), ((5, 123), 123, 123), ((77,), 64, 200)]


@pytest.mark.parametrize("lead_shape, k_in, n_out", SHAPES)
@pytest.mark.parametrize("r", [1, 4, 8, 16, 64])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_forward_and_grads_match_float64(lead_shape, k_in, n_out, r, bias, dtype):
    x, weight, b, lora_A, lora_B, dy = make_inputs(lead_shape, k_in, n_out, r, dtype, bias)
    scaling = 2.0

    def ours(x, weight, b, lora_A, lora_B):
        y, rowsq = lora_linear(x, weight, b, lora_A, lora_B, scaling, backend="torch", compute_rowsq=True)
        assert rowsq.dtype == torch.float32 and rowsq.shape == x.shape[:-1]
        assert rel_err(rowsq, row_sq_norms_reference(x)) < REL_TOL[torch.float32] * 10
        return y

    def reference(x, weight, b, lora_A, lora_B):
        return lora_linear_reference(x, weight, b, lora_A, lora_B, scaling)

    got = run_with_grads(ours, x, weight, b, lora_A, lora_B, dy)
    want = run_with_grads(reference, *(None if t is None else t.double() for t in (x, weight, b, lora_A, lora_B, dy)))
    for name, g, w in zip(("y", "dx", "dA", "dB"), got, want):
        assert g.dtype == dtype, name
        assert rel_err(g, w) < REL_TOL[dtype], f"{name}: {rel_err(g, w):.2e}"


@pytest.mark.parametrize("lead_shape, k_in, n_out", SHAPES)
@pytest.mark.parametrize("r", [1, 16])
@pytest.mark.parametrize("merge", [True, False])
def test_both_weight_strategies_match_float64(monkeypatch, lead_shape, k_in, n_out, r, merge):
    """W + s·B·A folded on the fly, and the expand added into y: each forced on every shape."""
    monkeypatch.setattr(torch_fused, "merges_on_the_fly", lambda *args: merge)
    x, weight, b, lora_A, lora_B, dy = make_inputs(lead_shape, k_in, n_out, r, torch.float32, True, seed=r)
    fn = lambda x, w, b, a, bb: lora_linear(x, w, b, a, bb, 1.7, backend="torch")[0]  # noqa: E731
    ref = lambda x, w, b, a, bb: lora_linear_reference(x, w, b, a, bb, 1.7)  # noqa: E731
    got = run_with_grads(fn, x, weight, b, lora_A, lora_B, dy)
    want = run_with_grads(ref, *(t.double() for t in (x, weight, b, lora_A, lora_B, dy)))
    for name, g, w in zip(("y", "dx", "dA", "dB"), got, want):
        assert rel_err(g, w) < REL_TOL[torch.float32], f"{name}: {rel_err(g, w):.2e}"


@settings(max_examples=40, deadline=None, derandomize=True)
@given(tokens=st.integers(1, 700), k_in=st.integers(1, 160), n_out=st.integers(1, 160), r=st.integers(1, 20),
       bias=st.booleans(), needs=st.sampled_from(["all", "no-dx", "A-only", "B-only"]))
def test_any_shape_and_any_grad_subset_match_float64(tokens, k_in, n_out, r, bias, needs):
    """Random shapes either side of both strategy thresholds, and every mix of which inputs need grads
    (x frozen, as for a first block fed by frozen embeddings; A or B frozen)."""
    x, weight, b, lora_A, lora_B, dy = make_inputs((tokens,), k_in, n_out, r, torch.float32, bias, seed=tokens)
    wants = {"all": (True, True, True), "no-dx": (False, True, True), "A-only": (True, True, False),
             "B-only": (False, False, True)}[needs]

    def grads(fn, *tensors):
        x, w, bb, a, bm, g = tensors
        leaves = [t.detach().clone().requires_grad_(want) for t, want in zip((x, a, bm), wants)]
        y = fn(leaves[0], w, bb, leaves[1], leaves[2])
        y.backward(g)
        return [y] + [leaf.grad for leaf in leaves]

    got = grads(lambda x, w, bb, a, bm: lora_linear(x, w, bb, a, bm, 0.9, backend="torch")[0],
                x, weight, b, lora_A, lora_B, dy)
    want = grads(lambda x, w, bb, a, bm: lora_linear_reference(x, w, bb, a, bm, 0.9),
                 *(None if t is None else t.double() for t in (x, weight, b, lora_A, lora_B, dy)))
    for name, g, w in zip(("y", "dx", "dA", "dB"), got, want):
        assert (g is None) == (w is None), name
        if g is not None:
            assert rel_err(g, w) < REL_TOL[torch.float32], f"{name}: {rel_err(g, w):.2e}"


def test_merging_on_the_fly_only_where_it_pays_and_stays_exact():
    merges = torch_fused.merges_on_the_fly
    assert merges(2048, 384, 1536, torch.float32, 0.0)  # a MiniLM FFN batch: many tokens per weight
    assert not merges(2048, 4096, 4096, torch.float32, 0.0)  # a 7B-class layer: W is the bigger pass
    assert not merges(2048, 384, 1536, torch.bfloat16, 0.0)  # 16-bit W + s·B·A would round the update away
    assert not merges(2048, 384, 1536, torch.float16, 0.0)
    assert not merges(2048, 384, 1536, torch.float32, 0.1)  # dropout: the branches see different inputs


def test_merged_call_keeps_the_frozen_weight_untouched():
    assert torch_fused.merges_on_the_fly(615, 123, 123, torch.float32, 0.0)
    x, weight, b, lora_A, lora_B, dy = make_inputs((5, 123), 123, 123, 8, torch.float32, True)
    before = weight.clone()
    run_with_grads(lambda x, w, b, a, bb: lora_linear(x, w, b, a, bb, 2.0, backend="torch")[0],
                   x, weight, b, lora_A, lora_B, dy)
    assert torch.equal(weight, before)


@pytest.mark.parametrize("lead_shape, k_in, n_out", SHAPES)
@pytest.mark.parametrize("no_grad_mode", [torch.no_grad, torch.inference_mode])
def test_forward_without_autograd_matches(lead_shape, k_in, n_out, no_grad_mode):
    """Under no_grad / inference_mode the op skips autograd: same y, same Σx², nothing to backprop."""
    x, weight, b, lora_A, lora_B, _ = make_inputs(lead_shape, k_in, n_out, 8, torch.float32, True, seed=3)
    lora_A.requires_grad_()
    with no_grad_mode():
        y_fast, rowsq_fast = lora_linear(x, weight, b, lora_A, lora_B, 2.0, backend="torch", compute_rowsq=True)
    y, rowsq = lora_linear(x, weight, b, lora_A, lora_B, 2.0, backend="torch", compute_rowsq=True)
    assert y.requires_grad and not y_fast.requires_grad
    assert y_fast.shape == y.shape and rowsq_fast.shape == rowsq.shape == x.shape[:-1]
    torch.testing.assert_close(y_fast, y.detach(), rtol=0, atol=0)
    torch.testing.assert_close(rowsq_fast, rowsq, rtol=0, atol=0)


def test_non_contiguous_input():
    x, weight, b, lora_A, lora_B, dy = make_inputs((40,), 2 * 96, 80, 8, torch.float32, True)
    x_strided = x[:, ::2]  # every other feature: a strided, non-contiguous view
    assert not x_strided.is_contiguous()
    fn = lambda x, w, b, a, bb: lora_linear(x, w, b, a, bb, 0.5, backend="torch")[0]  # noqa: E731
    ref = lambda x, w, b, a, bb: lora_linear_reference(x, w, b, a, bb, 0.5)  # noqa: E731
    got = run_with_grads(fn, x_strided, weight[:, :96], b, lora_A[:, :96], lora_B, dy)
    want = run_with_grads(ref, *(t.double() for t in (x_strided, weight[:, :96], b, lora_A[:, :96], lora_B, dy)))
    for g, w in zip(got, want):
        assert rel_err(g, w) < REL_TOL[torch.float32]


@pytest.mark.parametrize("p", [0.1, 0.5])
@pytest.mark.parametrize("lead_shape", [(3, 37), (3, 97)])  # a short and a longer sequence
def test_dropout_uses_one_mask_in_forward_and_backward(p, lead_shape):
    x, weight, b, lora_A, lora_B, dy = make_inputs(lead_shape, 96, 72, 8, torch.float32, True)
    seed = 1234
    keep = dropout_mask((lead_shape[0] * lead_shape[1], 96), p, seed, x.device).reshape(*lead_shape, 96)
    fn = lambda x, w, b, a, bb: lora_linear(x, w, b, a, bb, 1.5, dropout_p=p, seed=seed, backend="torch")[0]  # noqa: E731
    ref = lambda x, w, b, a, bb: lora_linear_reference(x, w, b, a, bb, 1.5, keep.double())  # noqa: E731
    got = run_with_grads(fn, x, weight, b, lora_A, lora_B, dy)
    want = run_with_grads(ref, *(t.double() for t in (x, weight, b, lora_A, lora_B, dy)))
    for name, g, w in zip(("y", "dx", "dA", "dB"), got, want):
        assert rel_err(g, w) < REL_TOL[torch.float32], name


def test_dropout_mask_has_right_expectation_and_rate():
    p = 0.3
    keep = dropout_mask((400, 500), p, seed=7, device=torch.device("cpu"))
    values = keep.unique().tolist()
    assert len(values) == 2 and values[0] == 0.0 and values[1] == pytest.approx(1 / (1 - p))
    assert (keep == 0).float().mean().item() == pytest.approx(p, abs=0.01)
    assert keep.mean().item() == pytest.approx(1.0, abs=0.01)
    assert not torch.equal(keep, dropout_mask((400, 500), p, seed=8, device=torch.device("cpu")))


def test_dropout_masks_are_uncorrelated_across_seeds_and_neighbours():
    """The hash mask: no correlation between consecutive seeds, neighbouring elements or rows (1M draws, so
    a true correlation of 0 stays within ±0.005 with overwhelming probability)."""
    cpu = torch.device("cpu")
    a = dropout_mask((1000, 1000), 0.5, seed=41, device=cpu) > 0
    b = dropout_mask((1000, 1000), 0.5, seed=42, device=cpu) > 0

    def corr(u, v):
        return torch.corrcoef(torch.stack([u.flatten().float(), v.flatten().float()]))[0, 1].abs().item()

    assert corr(a, b) < 0.005
    assert corr(a[:, :-1], a[:, 1:]) < 0.005  # neighbouring columns
    assert corr(a[:-1], a[1:]) < 0.005  # neighbouring rows
    per_row = (~a).float().mean(1)  # each row drops about half its entries
    assert per_row.min() > 0.4 and per_row.max() < 0.6


def test_dropout_zero_is_identical_to_no_dropout():
    x, weight, b, lora_A, lora_B, _ = make_inputs((50,), 64, 48, 4, torch.float32, True)
    y0, _ = lora_linear(x, weight, b, lora_A, lora_B, 2.0, dropout_p=0.0, seed=99, backend="torch")
    y1, _ = lora_linear(x, weight, b, lora_A, lora_B, 2.0, backend="torch")
    assert torch.equal(y0, y1)


def test_probe_mode_is_the_frozen_linear_plus_norms():
    x, weight, b, *_ = make_inputs((4, 33), 65, 31, 1, torch.float32, True)
    y, rowsq = lora_linear(x, weight, b, None, None, 0.0, backend="torch", compute_rowsq=True)
    assert torch.allclose(y, torch.nn.functional.linear(x, weight, b), atol=1e-6)
    assert rel_err(rowsq, row_sq_norms_reference(x)) < 1e-6


def test_saves_no_input_copy_when_adapter_frozen():
    """x is saved only for dA: with A frozen nothing of size T×in is kept for backward."""
    x, weight, b, lora_A, lora_B, _ = make_inputs((256,), 128, 64, 4, torch.float32, True)
    lora_B.requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        lora_linear(x, weight, b, lora_A, lora_B, 1.0, backend="torch")
    assert x.numel() not in saved


@pytest.mark.parametrize("merge", [True, False])
@pytest.mark.parametrize("dropout_p", [0.0, 0.25])
@pytest.mark.parametrize("bias", [True, False])
def test_trainable_base_weight_and_bias_match_float64(monkeypatch, merge, dropout_p, bias):
    """dW = dyᵀ·x (the base sees the undropped x) and db = Σ_t dy when the caller unfreezes them."""
    monkeypatch.setattr(torch_fused, "merges_on_the_fly", lambda *args: merge and dropout_p == 0.0)
    x, weight, b, lora_A, lora_B, dy = make_inputs((3, 41), 72, 56, 8, torch.float32, bias, seed=5)
    seed = 77
    keep = dropout_mask((123, 72), dropout_p, seed, x.device).reshape(3, 41, 72) if dropout_p else None

    def grads(fn, x, weight, b, lora_A, lora_B, dy):
        leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (x, weight, b, lora_A, lora_B)]
        fn(*leaves).backward(dy)
        return [t.grad if t is not None else None for t in leaves]

    got = grads(lambda *t: lora_linear(*t, 1.3, dropout_p=dropout_p, seed=seed, backend="torch")[0],
                x, weight, b, lora_A, lora_B, dy)
    want = grads(lambda *t: lora_linear_reference(*t, 1.3, None if keep is None else keep.double()),
                 *(None if t is None else t.double() for t in (x, weight, b, lora_A, lora_B, dy)))
    for name, g, w in zip(("dx", "dW", "db", "dA", "dB"), got, want):
        assert (g is None) == (w is None), name
        if g is not None:
            assert rel_err(g, w) < REL_TOL[torch.float32], f"{name}: {rel_err(g, w):.2e}"


def test_probe_gives_base_weight_and_bias_gradients():
    x, weight, b, *_, dy = make_inputs((37,), 65, 31, 1, torch.float32, True, seed=6)
    w, bb = weight.clone().requires_grad_(), b.clone().requires_grad_()
    lora_linear(x, w, bb, None, None, 0.0, backend="torch", compute_rowsq=True)[0].backward(dy)
    assert rel_err(w.grad, dy.double().t() @ x.double()) < REL_TOL[torch.float32]
    assert rel_err(bb.grad, dy.double().sum(0)) < REL_TOL[torch.float32]


@pytest.mark.parametrize("probe", [False, True], ids=["lora", "probe"])
@pytest.mark.parametrize("merge", [True, False])
@pytest.mark.parametrize("masked", [False, True])
def test_update_sums_from_the_fused_backward_match_float64(monkeypatch, probe, merge, masked):
    """The sink's gradient is [Σ_t w_t·‖x_t‖·‖dy_t‖, Σ_t w_t] in float64, whichever grads the call computes."""
    monkeypatch.setattr(torch_fused, "merges_on_the_fly", lambda *args: merge)
    x, weight, b, lora_A, lora_B, dy = make_inputs((3, 41), 72, 56, 8, torch.float32, True, seed=9)
    x = x * 5  # norms well away from 1
    mask = (torch.rand(3, 41, generator=torch.Generator().manual_seed(1)) > 0.4) if masked else None
    sink = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    adapter = (None, None) if probe else (lora_A, lora_B.requires_grad_())
    y, _ = lora_linear(x, weight, b, *adapter, 0.8, backend="torch", update_sink=sink, token_mask=mask)
    y.backward(dy)
    want = update_sums_reference(x, dy, mask)
    assert rel_err(sink.grad, want) < NORM_RTOL
    assert sink.grad[1].item() == (mask.sum().item() if masked else 3 * 41)


def test_bad_update_arguments_are_named():
    x, weight, b, lora_A, lora_B, _ = make_inputs((4,), 8, 6, 2, torch.float32, True)
    with pytest.raises(ValueError, match="update_sink must be a float64 tensor of shape"):
        lora_linear(x, weight, b, lora_A, lora_B, 1.0, backend="torch", update_sink=torch.zeros(2))
    with pytest.raises(TypeError, match="token_mask must be a bool tensor"):
        lora_linear(x, weight, b, lora_A, lora_B, 1.0, backend="torch", token_mask=torch.ones(4))
    with pytest.raises(ValueError, match="token_mask has shape"):
        lora_linear(x, weight, b, lora_A, lora_B, 1.0, backend="torch", token_mask=torch.ones(5, dtype=torch.bool))


def test_rowsq_gets_no_materialized_gradient():
    """y alone when rowsq is not asked for; with it, backward gets None (not zeros) for rowsq's gradient."""
    x, weight, b, lora_A, lora_B, dy = make_inputs((8,), 16, 12, 2, torch.float64, False, seed=4)
    A = lora_A.clone().requires_grad_()
    y = torch_fused.TorchFusedLoRA.apply(x, weight, b, A, lora_B, 1.0, 0.0, 0, False, None, None)
    assert isinstance(y, torch.Tensor) and y.shape == (8, 12)
    seen = []
    original = torch_fused.TorchFusedLoRA.backward

    def spy(ctx, dy_, drowsq=None):
        seen.append(drowsq)
        return original(ctx, dy_, drowsq)

    try:
        torch_fused.TorchFusedLoRA.backward = staticmethod(spy)
        y, rowsq = torch_fused.TorchFusedLoRA.apply(x, weight, b, A, lora_B, 1.0, 0.0, 0, True, None, None)
        y.backward(dy)
    finally:
        torch_fused.TorchFusedLoRA.backward = staticmethod(original)
    assert seen == [None] and A.grad is not None
