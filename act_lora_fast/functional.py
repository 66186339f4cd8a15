"""`lora_linear`: the one entry point that picks a backend and runs the fused LoRA op.

Backends:
- ``triton``: fused Triton kernels; CUDA tensors, or CPU tensors when ``TRITON_INTERPRET=1`` was set before the
  kernels were imported (Triton builds them for its interpreter then).
- ``torch``: the fused PyTorch autograd.Function (the CPU path; on CUDA tensors its GEMMs are cuBLAS's).
- ``reference``: the textbook unfused formula with plain autograd.
- ``auto`` (default): the ``ACT_LORA_BACKEND`` environment variable if set; else ``torch`` on CPU; on CUDA,
  the backend that a measured table (``ACT_LORA_BACKEND_TABLE``, see `pick_from_table`) names for the nearest
  shape of the same dtype, and ``triton`` when there is no table or no entry for the dtype (``torch`` when
  Triton is not installed). A process reads each table file once (a rewritten table takes effect in the next
  process).
"""
import functools
import json
import math
import os
import sys

import torch

from ._dist import is_dtensor
from .kernels.reference import UpdateTap, lora_linear_reference, row_sq_norms_reference
from .kernels.torch_fused import dropout_keep_mask, fused_forward, torch_fused_lora, torch_probe_linear

BACKENDS = ("auto", "triton", "torch", "reference")
BACKEND_ENV_VAR = "ACT_LORA_BACKEND"
BACKEND_TABLE_ENV_VAR = "ACT_LORA_BACKEND_TABLE"
BACKEND_TABLE_FORMAT = "act_lora_fast.backend_table/1"


def check_backend_name(backend):
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    return backend


@functools.lru_cache(maxsize=None)  # asked on every call with backend='triton'; an installed package stays
def _triton_importable():
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def load_backend_table(path):
    """The entries of a backend table, checked: {"format": "act_lora_fast.backend_table/1", "device": str,
    "entries": [{"dtype": "bfloat16", "tokens": int, "in": int, "out": int, "r": int, "best": "triton"|"torch"}]}.
    A malformed file raises a ValueError naming it."""
    try:
        stat = os.stat(path)
    except OSError as err:
        raise ValueError(f"backend table {path}: cannot be read ({err.strerror})") from None
    return _load_backend_table(os.fspath(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4)
def _load_backend_table(path, _mtime_ns, _size):  # keyed on the file's state: an edited table is re-read
    def bad(problem):
        return ValueError(f"backend table {path}: {problem}")

    try:
        with open(path, encoding="utf-8") as f:
            table = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise bad(f"cannot be read as JSON ({err})") from None
    if not isinstance(table, dict) or table.get("format") != BACKEND_TABLE_FORMAT:
        raise bad(f"'format' must be {BACKEND_TABLE_FORMAT!r}")
    entries = table.get("entries")
    if not isinstance(entries, list):
        raise bad("'entries' must be a list")
    checked = []
    for i, entry in enumerate(entries):
        sizes = [entry.get(k) if isinstance(entry, dict) else None for k in ("tokens", "in", "out", "r")]
        if (not isinstance(entry, dict) or not isinstance(entry.get("dtype"), str)
                or entry.get("best") not in ("triton", "torch")
                or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in sizes)):
            raise bad(f"entry {i} must hold dtype (str), tokens/in/out/r (ints >= 1) and best "
                      f"('triton' or 'torch'), got {entry!r}")
        checked.append((entry["dtype"], tuple(math.log(v) for v in sizes), entry["best"]))
    return tuple(checked)


def pick_from_table(entries, dtype, tokens, k_in, n_out, r):
    """The 'best' of the entry of the same dtype nearest in log-shape (Euclidean over log tokens, in, out, r);
    None when the table has no entry for the dtype."""
    name = str(dtype).replace("torch.", "")
    point = tuple(math.log(max(int(v), 1)) for v in (tokens, k_in, n_out, r))
    same = [(sum((a - b) ** 2 for a, b in zip(shape, point)), best) for d, shape, best in entries if d == name]
    return min(same)[1] if same else None


@functools.lru_cache(maxsize=4096)  # asked on every CUDA call with backend='auto': no file stat per call
def _table_choice(path, dtype, shape):
    return pick_from_table(load_backend_table(path), dtype, *shape) or "triton"


def _auto_cuda(dtype, shape):
    if not _triton_importable():
        return "torch"
    path = os.environ.get(BACKEND_TABLE_ENV_VAR)
    if path and dtype is not None and shape is not None:
        return _table_choice(path, dtype, tuple(shape))
    return "triton"


def resolve_backend(backend, device, *, dtype=None, shape=None):
    """The concrete backend ('triton', 'torch' or 'reference') for tensors on `device`.

    `dtype` and `shape` = (tokens, in, out, r) let ``auto`` consult the backend table on CUDA."""
    if backend == "auto" and device.type == "cpu" and BACKEND_ENV_VAR not in os.environ:
        return "torch"  # the common case, on every call: no further checks to pay for
    check_backend_name(backend)
    if backend == "auto":
        env_choice = os.environ.get(BACKEND_ENV_VAR, "auto")
        try:
            backend = check_backend_name(env_choice)
        except ValueError as err:
            raise ValueError(f"{BACKEND_ENV_VAR}={env_choice!r}: {err}") from None
    if backend == "auto":
        return _auto_cuda(dtype, shape) if device.type == "cuda" else "torch"
    if backend == "triton":
        if not _triton_importable():
            raise RuntimeError("backend='triton' needs the triton package (Linux); use backend='torch'")
        if device.type != "cuda" and not _kernels_run_on_cpu():
            raise RuntimeError(
                f"backend='triton' needs CUDA tensors, got tensors on {device.type}; set TRITON_INTERPRET=1 "
                "before importing act_lora_fast to run the kernels in Triton's interpreter, or use "
                "backend='torch' on CPU"
            )
    return backend


def _kernels_run_on_cpu():
    """Whether the Triton kernels take CPU tensors: they were built for Triton's interpreter, which Triton
    decides when it decorates them (on import, from TRITON_INTERPRET); not imported yet, the variable decides."""
    utils = sys.modules.get(__package__ + ".kernels.triton.utils")
    return utils.KERNELS_INTERPRETED if utils is not None else os.environ.get("TRITON_INTERPRET") == "1"


def new_dropout_seed():
    """A per-call seed drawn from torch's CPU generator: reproducible under torch.manual_seed, no GPU sync."""
    return int(torch.randint(0, 2**31 - 1, (1,)).item())


def dropout_mask(shape, p, seed, device, dtype=torch.float32, backend="torch"):
    """The keep mask (0 or 1/(1-p)) that `backend` uses for `seed`; for tests and debugging."""
    if backend == "triton":
        from .kernels.triton.forward import dropout_mask as triton_dropout_mask

        return triton_dropout_mask(shape, p, seed, device).to(dtype)
    return dropout_keep_mask(shape, p, seed, device, dtype)


def _shape(t):
    return tuple(t.shape)


_PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)


def _inputs_ok(x, weight, bias, lora_A, lora_B, dropout_p):
    """The common case, checked with a few attribute reads (every call pays this); False sends the caller to
    `check_lora_inputs`'s full check, which names the problem."""
    if type(x) not in _PLAIN_TENSORS or type(weight) not in _PLAIN_TENSORS:  # DTensors and the like: the full check
        return False
    dtype, device = x.dtype, x.device
    if not dtype.is_floating_point or weight.dtype is not dtype or weight.device != device or weight.dim() != 2:
        return False
    n_out, k_in = weight.shape
    if x.dim() == 0 or x.shape[-1] != k_in:
        return False
    if bias is not None and not (type(bias) in _PLAIN_TENSORS and bias.dtype is dtype and bias.device == device
                                 and bias.dim() == 1 and bias.shape[0] == n_out):
        return False
    if not (isinstance(dropout_p, float) and 0.0 <= dropout_p < 1.0):  # ints and odd types: the full check
        return False
    if lora_A is None:
        return lora_B is None
    if type(lora_A) not in _PLAIN_TENSORS or type(lora_B) not in _PLAIN_TENSORS:
        return False
    if lora_A.dtype is not dtype or lora_B.dtype is not dtype or lora_A.device != device or lora_B.device != device:
        return False
    if lora_A.dim() != 2 or lora_B.dim() != 2:
        return False
    r, a_in = lora_A.shape
    return r >= 1 and a_in == k_in and tuple(lora_B.shape) == (n_out, r)


def check_lora_inputs(x, weight, bias, lora_A, lora_B, dropout_p=0.0):
    """Clear TypeError / ValueError for inputs the kernels would read out of bounds or BLAS reject cryptically."""
    if _inputs_ok(x, weight, bias, lora_A, lora_B, dropout_p):
        return
    named = {"x": x, "weight": weight, "bias": bias, "lora_A": lora_A, "lora_B": lora_B}
    given = {name: t for name, t in named.items() if t is not None or name in ("x", "weight")}
    sharded = [name for name, t in given.items() if is_dtensor(t)]
    if sharded:
        raise TypeError(f"the fused LoRA op got a DTensor ({', '.join(sharded)}): a sharded (FSDP2) or "
                        "tensor-parallel weight reached it outside its block's forward. Shard per block "
                        "(act_lora_fast.shard_model: fully_shard on each block, then the root) and call the "
                        "model, not a layer of it, so that each layer sees its block's unsharded weights")
    for name, t in given.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    dtypes = {t.dtype for t in given.values()}
    if len(dtypes) > 1:
        raise TypeError("x, weight, bias, lora_A and lora_B must share one dtype, got "
                        + ", ".join(f"{name} {t.dtype}" for name, t in given.items()))
    devices = {t.device for t in given.values()}
    if len(devices) > 1:
        raise ValueError("all tensors must be on one device, got "
                         + ", ".join(f"{name} on {t.device}" for name, t in given.items()))
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (out_features, in_features), got shape {_shape(weight)}")
    n_out, k_in = weight.shape
    if x.dim() == 0 or x.shape[-1] != k_in:
        raise ValueError(f"x's last dim must be in_features={k_in} (weight's shape {_shape(weight)}), got shape "
                         f"{_shape(x)}")
    if bias is not None and _shape(bias) != (n_out,):
        raise ValueError(f"bias must have shape ({n_out},), got {_shape(bias)}")
    if (lora_A is None) != (lora_B is None):
        raise ValueError("lora_A and lora_B must both be given, or both be None (probe mode)")
    if lora_A is not None:
        if lora_A.dim() != 2 or lora_A.shape[0] < 1 or lora_A.shape[1] != k_in:
            raise ValueError(f"lora_A must have shape (r, {k_in}) with r >= 1, got {_shape(lora_A)}")
        if _shape(lora_B) != (n_out, lora_A.shape[0]):
            raise ValueError(f"lora_B must have shape ({n_out}, {lora_A.shape[0]}) (out_features, r), got "
                             f"{_shape(lora_B)}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p!r}")


def _check_update_args(x, update_sink, token_mask):
    if update_sink is not None:
        if not (isinstance(update_sink, torch.Tensor) and update_sink.dtype == torch.float64
                and tuple(update_sink.shape) == (2,) and update_sink.device == x.device):
            raise ValueError(f"update_sink must be a float64 tensor of shape (2,) on {x.device}")
    if token_mask is not None:
        if not isinstance(token_mask, torch.Tensor) or token_mask.dtype != torch.bool:
            raise TypeError("token_mask must be a bool tensor (True = count the token)")
        if tuple(token_mask.shape) != tuple(x.shape[:-1]):
            raise ValueError(f"token_mask has shape {_shape(token_mask)}, but the input's token dims are "
                             f"{tuple(x.shape[:-1])}")


def lora_linear(x, weight, bias, lora_A, lora_B, scaling, *, dropout_p=0.0, seed=0, backend="auto",
                compute_rowsq=False, update_sink=None, token_mask=None):
    """y = x·Wᵀ + b + s·(drop(x)·Aᵀ)·Bᵀ for x of shape (..., in); returns (y, rowsq).

    ``rowsq`` holds Σx² per token (shape x.shape[:-1], fp32; float64 for float64 x on the torch backend) when
    `compute_rowsq`, else None.
    ``lora_A=None`` is the probe mode: the frozen linear plus the norm reduction only.
    ``update_sink``: a float64 tensor of shape (2,) with ``requires_grad=True`` (or None). The backward gives
    it, as its gradient, [Σ_t ‖x_t‖·‖dy_t‖, token count] over the tokens that `token_mask` (bool, shape
    x.shape[:-1]; None = all) keeps: the "update" score, reduced by the fused backward from the dy it reads.
    All tensors must already share one dtype and device (the module casts under autocast); bad shapes, dtypes
    or devices raise a TypeError / ValueError naming the problem, whatever the backend.
    """
    if not _inputs_ok(x, weight, bias, lora_A, lora_B, dropout_p):
        check_lora_inputs(x, weight, bias, lora_A, lora_B, dropout_p)  # raises, naming the problem
    if update_sink is not None or token_mask is not None:
        _check_update_args(x, update_sink, token_mask)
    two_d = x.dim() == 2
    x2d = x if two_d else x.reshape(-1, x.shape[-1])
    flat_mask = token_mask.reshape(-1) if token_mask is not None and token_mask.dim() != 1 else token_mask
    probe = lora_A is None
    device = x.device
    if backend == "torch" or (backend == "auto" and device.type == "cpu" and BACKEND_ENV_VAR not in os.environ):
        backend = "torch"  # the common cases, on every call: nothing further to check
    elif not (backend == "triton" and _triton_importable() and (x.is_cuda or _kernels_run_on_cpu())):
        backend = resolve_backend(backend, device, dtype=x.dtype,
                                  shape=(x2d.shape[0], weight.shape[1], weight.shape[0],
                                         0 if probe else lora_A.shape[0]))

    if backend == "torch":
        if probe:
            y, rowsq = torch_probe_linear(x2d, weight, bias, update_sink, flat_mask)
        elif torch.is_grad_enabled():
            out = torch_fused_lora(x2d, weight, bias, lora_A, lora_B, scaling, dropout_p, seed, compute_rowsq,
                                   update_sink, flat_mask)
            y, rowsq = out if compute_rowsq else (out, None)
        else:  # no_grad / inference_mode: the same forward without autograd's bookkeeping
            y, rowsq, _, _ = fused_forward(x2d, weight, bias, lora_A, lora_B, scaling, dropout_p, seed,
                                           compute_rowsq)
    elif backend == "triton":
        autograd = _triton_autograd()  # the Functions below trust the checks above
        if not torch.is_grad_enabled():  # no_grad / inference_mode: the kernels without autograd's bookkeeping
            y, _, rowsq = autograd.lora_forward(x2d, weight=weight, bias=bias, lora_A=lora_A, lora_B=lora_B,
                                                scaling=scaling, dropout_p=dropout_p, seed=seed,
                                                compute_rowsq=compute_rowsq, checked=True)
        elif probe:
            y, rowsq = autograd.triton_probe_function(x2d, weight, bias, update_sink, flat_mask)
        else:
            update = (update_sink, flat_mask) if update_sink is not None else ()  # left out: two fewer inputs
            out = autograd.triton_lora_function(x2d, weight, bias, lora_A, lora_B, scaling, dropout_p, seed,
                                                compute_rowsq, *update)
            y, rowsq = out if compute_rowsq else (out, None)
    else:  # reference
        keep = None
        if not probe and dropout_p > 0.0:
            keep = dropout_keep_mask(x2d.shape, dropout_p, seed, device, x.dtype)
        y = lora_linear_reference(x2d, weight, bias, lora_A, lora_B, scaling, keep)
        if update_sink is not None:
            y = UpdateTap.apply(y, x2d, update_sink, flat_mask)
        rowsq = row_sq_norms_reference(x2d).float() if compute_rowsq else None

    if not two_d:
        lead_shape = x.shape[:-1]
        y = y.reshape(*lead_shape, weight.shape[0])
        rowsq = rowsq.reshape(lead_shape) if compute_rowsq else None
    return y, (rowsq if compute_rowsq else None)


_TRITON_AUTOGRAD = []


def _triton_autograd():
    """The Triton autograd module, imported on first use (Triton may be absent; an import per call costs)."""
    if not _TRITON_AUTOGRAD:
        from .kernels.triton import autograd

        _TRITON_AUTOGRAD.append(autograd)
    return _TRITON_AUTOGRAD[0]
