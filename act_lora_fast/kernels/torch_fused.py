"""The CPU path: one autograd.Function doing LoRA with the fewest passes over memory.

Compared with the unfused formula (and PEFT's lora.Linear) it
- never stores a dropout copy of x: the keep mask is regenerated in backward from the call's seed;
- when there are many tokens per weight element, folds s·B·A into a transient copy of W, so forward and
  backward are each one big GEMM with no extra pass over y or dx (see `merges_on_the_fly`);
- otherwise adds the rank-r expand into the base output in place (addmm) instead of allocating a second T×out
  tensor;
- saves x·Aᵀ (r × T) for dB instead of recomputing it (s rides on the GEMMs' alpha, never a pass of its own), and x only when A needs a gradient;
- runs the same forward without autograd under no_grad / inference_mode;
- gets dx and dy·B from one GEMM against [W (+ s·B·A), B] in backward when that beats a separate dy·B;
- computes the per-token Σx² in the same call, in fp32, for activation-norm tracking, and on request the
  "update" score Σ_t ‖x_t‖·‖dy_t‖ in backward (`update_sums`);
- gives the frozen base weight and bias gradients only when a caller has made them require one.

The same code runs on CUDA tensors (cuBLAS GEMMs), where it competes with the Triton kernels.
"""
import torch


def _mix32(value):
    """A 32-bit integer finaliser (Wellons' lowbias32) on Python ints: seeds -> well-spread constants."""
    value &= 0xFFFFFFFF
    value ^= value >> 16
    value = (value * 0x7FEB352D) & 0xFFFFFFFF
    value ^= value >> 15
    value = (value * 0x846CA68B) & 0xFFFFFFFF
    return value ^ (value >> 16)


def _int32(value):
    """A uint32 Python int as the int32 with the same bits (torch multiplies int32 modulo 2**32)."""
    return value - (1 << 32) if value >= 1 << 31 else value


def dropout_keep_mask(shape, p, seed, device, dtype):
    """The keep mask (0 or 1/(1-p)) for a (T, K) input and a call's seed; regenerated in backward, never stored.

    A counter-based hash of (seed, element index), as the Triton kernels do with Philox: no generator state,
    the same bits every time for the same seed, and several times faster on a CPU than ``bernoulli_``
    (torch's CPU generator draws one Mersenne-Twister number per element). The seed picks an odd multiplier
    and an offset, so two seeds' masks are not shifted copies of each other. An element is kept when the low
    24 bits of its hash are >= p·2²⁴. Every step runs in place on two buffers: on a CPU a fresh large tensor
    costs more in page faults than the arithmetic does.
    """
    rows, cols = shape
    count = rows * cols
    multiplier, offset = _int32(_mix32(seed) | 1), _int32(_mix32(seed ^ 0x5BD1E995))
    if count < 1 << 31:
        h = torch.arange(count, device=device, dtype=torch.int32)
    else:  # indices wrap modulo 2**32, as the int32 arithmetic below does anyway
        h = torch.arange(count, device=device, dtype=torch.int64).to(torch.int32)
    scratch = torch.empty_like(h)
    # lowbias32 with int32 ops: multiplications wrap modulo 2**32 and right shifts are arithmetic; still a
    # bijection with well-mixed low bits, which is all the threshold below reads.
    h.mul_(multiplier).add_(offset)
    for shift, factor in ((16, 0x7FEB352D), (15, 0x846CA68B), (16, None)):
        torch.bitwise_right_shift(h, shift, out=scratch)
        h.bitwise_xor_(scratch)
        if factor is not None:
            h.mul_(_int32(factor))
    kept = h.bitwise_and_(0xFFFFFF) >= int(round(p * (1 << 24)))
    same_width = torch.empty((), dtype=dtype).element_size() == scratch.element_size()
    mask = scratch.view(dtype) if same_width else torch.empty(count, device=device, dtype=dtype)
    return mask.copy_(kept).mul_(1.0 / (1.0 - p)).view(rows, cols)


def row_sq_norms(x2d):
    """Σx² per row, accumulated in fp32 (float64 for float64 x) whatever x's dtype (one read of x)."""
    dtype = torch.float64 if x2d.dtype == torch.float64 else torch.float32
    return torch.linalg.vector_norm(x2d, ord=2, dim=1, dtype=dtype).square_()


def update_sums(x_rowsq, dy_rowsq, token_mask=None):
    """[Σ_t w_t·‖x_t‖·‖dy_t‖, Σ_t w_t] in float64 from the per-token Σx² and Σdy²: the sums of the "update"
    score, the norm of each token's contribution to dL/dB = s·dyᵀ·(x·Aᵀ). `token_mask` (bool, (T,)) gives
    w_t, 1 for every token when None."""
    product = (x_rowsq.double() * dy_rowsq.double()).sqrt_()
    if token_mask is None:
        return torch.stack([product.sum(), product.new_full((), product.numel())])
    weight = token_mask.to(torch.float64)
    return torch.stack([product.mul_(weight).sum(), weight.sum()])


def function_outputs(ctx, y, rowsq, compute_rowsq):
    """What a LoRA autograd Function's forward returns: y alone (no placeholder output to allocate and mark),
    or (y, rowsq) with rowsq marked as never getting a gradient, so no zeros are built for it (nor for an
    unused y) before backward, whose dy may then be None."""
    if not compute_rowsq:
        return y
    ctx.set_materialize_grads(False)
    ctx.mark_non_differentiable(rowsq)
    return y, rowsq


def base_grads(ctx, dy, x2d):
    """dW = dyᵀ·x and db = Σ_t dy for a frozen base that a caller has made trainable (as nn.Linear does)."""
    d_weight = dy.t() @ x2d if ctx.needs_input_grad[1] else None
    d_bias = dy.sum(0) if ctx.needs_input_grad[2] else None
    return d_weight, d_bias


def merges_on_the_fly(num_tokens, k_in, n_out, dtype, dropout_p):
    """Whether a call computes y = x·(W + s·B·A)ᵀ and dx = dy·(W + s·B·A), the LoRA formula regrouped.

    Building the transient W + s·B·A costs a few passes over W (out × in) in each direction; it saves the
    pass over y that adding the expand takes in forward and the pass over dx in backward (T × (in + out) in
    all). So it pays when T·(in + out) > 2·in·out: a MiniLM batch of 2048 tokens, yes; 2048 tokens through a
    4096 × 4096 layer, no. Only in fp32/fp64: rounded to 16 bits, W + s·B·A would lose most of the small
    LoRA update. Not with dropout, where the LoRA branch sees another input than W does.
    """
    wide_enough = dtype in (torch.float32, torch.float64)
    return wide_enough and dropout_p == 0.0 and num_tokens * (k_in + n_out) > 2 * k_in * n_out


def _dx_and_dyB(dy, weight, lora_B, merge_A=None, scaling=1.0):
    """(dy·W, dy·B) from ONE GEMM against [W, B], so dy is read once. With `merge_A`, the first block is the
    transient W + s·B·A, whose build B's columns ride along with, and dy·W already includes dx's LoRA term.
    dx comes back as a strided view; it is a transient gradient, so unlike a forward output it pins nothing
    and nothing saves it."""
    k_in = weight.shape[1]
    stacked = torch.cat([weight, lora_B], dim=1)
    if merge_A is not None:
        stacked[:, :k_in].addmm_(lora_B, merge_A, alpha=scaling)
    both = dy @ stacked
    return both[:, :k_in], both[:, k_in:]


def stacks_b_beside_w(num_tokens, k_in, n_out, merged):
    """Whether backward gets dy·B from the dx GEMM against [W, B] rather than from a GEMM of its own.

    Merged, the transient weight is built anyway. Otherwise stacking copies W (out × in) to save a pass
    over dy (T × out): worth it when T > in. Measured: a 4096 × 4096 layer with 2,048 tokens 1.059 → 1.025
    of the floor without stacking; 4,096 tokens through 384 → 1536 with dropout 1.318 → 1.285 with it.
    Never when in > out: the stacked GEMM returns dx as a strided view, which slows the op that consumes it
    (an FFN output layer's dx feeds GELU's backward: 1.8× slower), while dy is narrow there and a separate
    dy·B costs no more than the extra columns (MiniLM step, all six blocks: 1.058 → 1.053 of the floor,
    benchmarks/results/notes_bench_helper.md).
    """
    return (merged or num_tokens > k_in) and k_in <= n_out


def fused_forward(x2d, weight, bias, lora_A, lora_B, scaling, dropout_p=0.0, seed=0, compute_rowsq=False,
                  keep_xa=False):
    """y = x·Wᵀ + b + s·(drop(x)·Aᵀ)·Bᵀ and the per-token Σx²; the forward of `TorchFusedLoRA`, also
    called directly where no gradient is wanted (inference skips autograd's bookkeeping).

    Returns ``(y, rowsq, xa_t, merged)``: ``rowsq`` is None unless `compute_rowsq`; ``xa_t`` = (drop(x)·Aᵀ)ᵀ
    (r × T), kept when `keep_xa` (dB needs it) or when the expand uses it, else None.
    """
    rowsq = row_sq_norms(x2d) if compute_rowsq else None
    merged = merges_on_the_fly(x2d.shape[0], weight.shape[1], weight.shape[0], x2d.dtype, dropout_p)
    xa_t = None
    if keep_xa or not merged:
        x_lora = x2d
        if dropout_p > 0.0:  # drop(x) is written over the mask it came from: no second T × K buffer
            x_lora = dropout_keep_mask(x2d.shape, dropout_p, seed, x2d.device, x2d.dtype).mul_(x2d)
        # (x·Aᵀ)ᵀ = A·xᵀ: a contiguous r × T is what dB needs. s rides on the GEMMs that read it (their alpha),
        # never a pass of its own. The forward output stays a plain contiguous tensor: stacking [W; A] into one
        # GEMM was measured to slow the ops downstream that read (and save) a strided y.
        xa_t = lora_A @ x_lora.t()
        del x_lora
    weight_used = torch.addmm(weight, lora_B, lora_A, alpha=scaling) if merged else weight
    y = torch.addmm(bias, x2d, weight_used.t()) if bias is not None else x2d @ weight_used.t()
    del weight_used
    if not merged:
        y.addmm_(xa_t.t(), lora_B.t(), alpha=scaling)
    return y, rowsq, (xa_t if keep_xa else None), merged


class TorchFusedLoRA(torch.autograd.Function):
    """(y, rowsq) of the LoRA linear (y alone when `compute_rowsq` is False). `update_sink`, a float64 (2,) tensor requiring grad, or None: its
    "gradient" is `update_sums` of this call, so the score reaches its owner through autograd (and the backward
    runs even where nothing else wants a gradient); `token_mask` (bool, (T,) or None) weights the score."""

    @staticmethod
    def forward(ctx, x2d, weight, bias, lora_A, lora_B, scaling, dropout_p, seed, compute_rowsq,
                update_sink=None, token_mask=None):
        wants_update = update_sink is not None and ctx.needs_input_grad[9]
        y, rowsq, xa_t, merged = fused_forward(x2d, weight, bias, lora_A, lora_B, scaling, dropout_p, seed,
                                               compute_rowsq or wants_update, keep_xa=ctx.needs_input_grad[4])
        ctx.scaling, ctx.dropout_p, ctx.seed, ctx.merged = scaling, dropout_p, seed, merged
        needs_x = ctx.needs_input_grad[3] or ctx.needs_input_grad[1]
        ctx.save_for_backward(x2d if needs_x else None, weight, lora_A, lora_B, xa_t,
                              rowsq if wants_update else None, token_mask if wants_update else None)
        return function_outputs(ctx, y, rowsq, compute_rowsq)

    @staticmethod
    def backward(ctx, dy, _drowsq=None):
        if dy is None:  # y did not reach the loss (only rowsq did)
            return (None,) * 11
        x2d, weight, lora_A, lora_B, xa_t, x_rowsq, token_mask = ctx.saved_tensors
        d_weight, d_bias = base_grads(ctx, dy, x2d)
        update = update_sums(x_rowsq, row_sq_norms(dy), token_mask) if x_rowsq is not None else None
        s, p = ctx.scaling, ctx.dropout_p
        keep = None
        if p > 0.0 and (ctx.needs_input_grad[0] or ctx.needs_input_grad[3]):
            keep = dropout_keep_mask((dy.shape[0], lora_A.shape[1]), p, ctx.seed, dy.device, dy.dtype)
        dx = dA = dB = None
        stacked = ctx.needs_input_grad[0] and stacks_b_beside_w(dy.shape[0], weight.shape[1], weight.shape[0],
                                                                ctx.merged)
        if stacked:
            dx, dyB = _dx_and_dyB(dy, weight, lora_B, merge_A=lora_A if ctx.merged else None, scaling=s)
        else:
            if ctx.needs_input_grad[0]:
                dx = dy @ weight
            # T × r, shared by dx's LoRA term and dA
            dyB = dy @ lora_B if ctx.needs_input_grad[0] or ctx.needs_input_grad[3] else None
        # dy·B is T × r, shared by dx's LoRA term and dA; s rides on their GEMMs' alpha (no pass over it).
        # addmm with beta=0 ignores its input (NaN included): lora_A / lora_Bᵀ only give the shape.
        if dx is not None and not (stacked and ctx.merged):  # the merged stack already holds dx's LoRA term
            if keep is None:
                dx.addmm_(dyB, lora_A, alpha=s)
            else:
                dx.addcmul_(dyB @ lora_A, keep, value=s)
        if ctx.needs_input_grad[3]:
            x_lora = x2d if keep is None else keep.mul_(x2d)  # the mask is not needed after this
            dA = torch.addmm(lora_A, dyB.t(), x_lora, beta=0, alpha=s)
        if ctx.needs_input_grad[4]:
            # (s·xaᵀ·dy)ᵀ rather than dyᵀ·xa: BLAS reduces over T far faster in this orientation.
            dB = torch.addmm(lora_B.t(), xa_t, dy, beta=0, alpha=s).t()
        return dx, d_weight, d_bias, dA, dB, None, None, None, None, update, None


class TorchProbeLinear(torch.autograd.Function):
    """Probe mode: the frozen linear plus the per-token Σx², nothing else (and the update score on request,
    as `TorchFusedLoRA` gives it)."""

    @staticmethod
    def forward(ctx, x2d, weight, bias, update_sink=None, token_mask=None):
        wants_update = update_sink is not None and ctx.needs_input_grad[3]
        rowsq = row_sq_norms(x2d)
        y = torch.addmm(bias, x2d, weight.t()) if bias is not None else x2d @ weight.t()
        ctx.save_for_backward(x2d if ctx.needs_input_grad[1] else None, weight, rowsq if wants_update else None,
                              token_mask if wants_update else None)
        ctx.mark_non_differentiable(rowsq)
        return y, rowsq

    @staticmethod
    def backward(ctx, dy, _drowsq):
        x2d, weight, x_rowsq, token_mask = ctx.saved_tensors
        d_weight, d_bias = base_grads(ctx, dy, x2d)
        update = update_sums(x_rowsq, row_sq_norms(dy), token_mask) if x_rowsq is not None else None
        return (dy @ weight if ctx.needs_input_grad[0] else None), d_weight, d_bias, update, None


torch_fused_lora = TorchFusedLoRA.apply
torch_probe_linear = TorchProbeLinear.apply
