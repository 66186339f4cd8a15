"""What the Triton LoRA kernels share: device checks, tile configs and their tuner, dot and dropout helpers."""
import contextlib
import functools
import os

import torch
import triton
import triton.language as tl

AUTOTUNE_ENV_VAR = "ACT_LORA_TRITON_AUTOTUNE"  # "0": every GEMM runs its first (default) config, no benchmark

_INTERPRET_ERROR = (
    "backend='triton' needs CUDA tensors or TRITON_INTERPRET=1 (set before act_lora_fast / triton kernels "
    "are imported) to run on CPU tensors through the Triton interpreter"
)


# ---------------------------------------------------------------------------------------------- devices
def interpret_env() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _version(text) -> tuple:
    return tuple(int(part) for part in text.split("+")[0].split(".")[:2] if part.isdigit())


@functools.lru_cache(maxsize=None)  # checked on every interpreted launch; versions do not change
def interpreter_works_with_numpy(triton_version=triton.__version__, numpy_version=None) -> bool:
    """Triton's interpreter before 3.7 turns launch arguments into Python ints in a way numpy 2.x rejects
    ("only 0-dimensional arrays can be converted to Python scalars"); compiled GPU kernels are unaffected."""
    if numpy_version is None:
        import numpy

        numpy_version = numpy.__version__
    return _version(triton_version) >= (3, 7) or _version(numpy_version) < (2,)


# Triton picks the interpreter when it decorates the kernels, i.e. when this package is imported: CPU tensors
# can run them exactly when this is True, whatever the environment says later.
KERNELS_INTERPRETED = interpret_env()


def triton_available(device) -> bool:
    """True when Triton kernels can run on tensors living on `device`."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available()
    return device.type == "cpu" and KERNELS_INTERPRETED


def check_triton_device(*tensors, kernel=None) -> None:
    """Raise a clear RuntimeError when the kernels cannot run on these tensors.

    `kernel` (any @triton.jit object of ours) lets us also catch the case where
    TRITON_INTERPRET=1 was set only after the kernels had been decorated: they were
    then built for the GPU and would fail with an obscure pointer error on CPU data.
    """
    dev = None
    for t in tensors:  # a plain loop: this runs on every launch
        if t is not None:
            if dev is None:
                dev = t.device
            elif t.device != dev:
                devices = {u.device for u in tensors if u is not None}
                raise RuntimeError(f"backend='triton' needs all tensors on one device, got "
                                   f"{sorted(map(str, devices))}")
    if dev is not None and dev.type != "cuda":
        if dev.type != "cpu" or not KERNELS_INTERPRETED:
            raise RuntimeError(_INTERPRET_ERROR + f" (got tensors on {dev})")
        if kernel is not None and type(kernel).__name__ != "InterpretedFunction":
            raise RuntimeError(_INTERPRET_ERROR + " (TRITON_INTERPRET=1 was set after the kernels were built)")
        if not interpreter_works_with_numpy():
            raise RuntimeError(f"Triton {triton.__version__}'s interpreter cannot run with numpy 2.x: install "
                               "triton>=3.7 to run the kernels on CPU tensors, or use backend='torch'")


_NO_GUARD = contextlib.nullcontext()  # stateless: one instance serves every CPU launch


def device_guard(t: torch.Tensor):
    """Launch on the tensors' GPU, not on whichever one is current (switching only when they differ: a
    `torch.cuda.device` context costs a few µs per launch)."""
    if t.is_cuda and t.get_device() != torch.cuda.current_device():
        return torch.cuda.device(t.device)
    return _NO_GUARD


@functools.lru_cache(maxsize=None)  # asked on every launch; a device's SM count does not change
def num_sms(device) -> int:
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 2  # interpreter: few large programs run fastest


# ---------------------------------------------------------------------------------------------- tiles
# Plain-int versions of triton.cdiv / triton.next_power_of_2, which are constexpr functions costing ~5 µs of
# Python per call on the host: a dozen of them were a third of the wrapper's time per step.
def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    return 1 << (int(n) - 1).bit_length() if n > 0 else 0


_SKINNY_WIDE, _SKINNY_NARROW = dict(num_warps=8, num_stages=3), dict(num_warps=4, num_stages=3)


def skinny_launch(BR: int) -> dict:
    """num_warps/num_stages of the rank-r (skinny) kernels on the GPU; wide ranks get more warps so the
    (rows x BLOCK_R) fp32 accumulator plus the Philox state of a dropout tile stay in registers."""
    return _SKINNY_WIDE if BR >= 64 else _SKINNY_NARROW


@functools.lru_cache(maxsize=4096)  # pure, asked on every launch
def block_r(r: int) -> int:
    # tl.dot needs every dim >= 16 on sm_90 for 16-bit operands, and power-of-two tiles.
    return max(16, next_power_of_2(int(r)))


@functools.lru_cache(maxsize=4096)  # pure, asked on every launch
def gemm_block_r(R: int, f32: bool) -> int:
    """Rank chunk of the GEMM epilogues (>= 16 for the MMA; small for FMA-based fp32 dots)."""
    return min(block_r(R), 32 if f32 else 64)


@functools.lru_cache(maxsize=4096)  # pure, asked on every launch
def rows_block(T: int, device) -> int:
    """Row tile of the memory-bound passes over x or dy: keep >= ~2 waves of programs on the GPU."""
    if torch.device(device).type != "cuda":
        return 64
    for bm in (64, 32):
        if cdiv(T, bm) >= 2 * num_sms(device):
            return bm
    return 16


# H200 (sm_90) GEMM tiles. 16-bit inputs run on wgmma tensor cores; fp32 inputs use IEEE dots (FMA
# pipes, no TF32) where big tiles only spill and take minutes in ptxas, so they get their own set.
# The first config of each list is the default that ACT_LORA_TRITON_AUTOTUNE=0 pins.
GEMM_CONFIGS_16 = [
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_stages=4, num_warps=8),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 8}, num_stages=3, num_warps=8),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_stages=3, num_warps=4),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 8}, num_stages=4, num_warps=4),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_stages=4, num_warps=4),
]
GEMM_CONFIGS_32 = [
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": 8}, num_stages=3, num_warps=4),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": 8}, num_stages=3, num_warps=8),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 32, "GROUP_M": 8}, num_stages=3, num_warps=8),
]
# Interpreter: fixed, moderately large tiles (few python-level block ops -> fast tests).
INTERP_GEMM = triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 4})
INTERP_BLOCK = 64  # INTERP_GEMM's BLOCK_M and BLOCK_N


def autotune_enabled() -> bool:
    return os.environ.get(AUTOTUNE_ENV_VAR, "1") != "0"


def m_bucket(m: int) -> int:
    """Token counts share a tuning entry per power of two: a new sequence length does not re-benchmark."""
    return 1 << (m - 1).bit_length() if m > 1 else 1  # next_power_of_2 inlined: asked on every GEMM launch


class ConfigTuner:
    """The best GEMM config per key, benchmarked once on the first launch with that key.

    Each kernel has its own tuner, key and `prune(configs, **flags)`; the key holds the M bucket, never M.
    With ACT_LORA_TRITON_AUTOTUNE=0 the first surviving config runs unbenchmarked (fast, reproducible checks).
    """

    def __init__(self, configs, prune):
        self.configs, self.prune, self.cache, self.launches = configs, prune, {}, {}

    def pick(self, key, launch, **flags) -> triton.Config:
        tuned = autotune_enabled()
        key = (tuned, key, *flags.values())  # what the prune reads is part of the key
        config = self.cache.get(key)
        if config is None:
            candidates = self.prune(self.configs, **flags)
            if tuned and len(candidates) > 1:
                timings = {c: triton.testing.do_bench(functools.partial(launch, c), warmup=10, rep=40)
                           for c in candidates}
                config = min(timings, key=timings.get)
            else:
                config = candidates[0]
            self.cache[key] = config
        return config


    def launch_kwargs(self, key, launch, flags, **prune_args) -> dict:
        """The kernel call's keyword arguments for `key`: `flags` plus the meta-parameters and launch options of
        the config `pick` chose, built once per key, so a repeated shape costs one lookup (the env var is read
        when a key is first launched). `launch(kwargs)` runs the kernel once; `key` must determine `flags` and
        `prune_args`."""
        kwargs = self.launches.get(key)
        if kwargs is None:
            config = self.pick(key, lambda c: launch({**flags, **launch_options(c)}), **prune_args)
            kwargs = self.launches[key] = {**flags, **launch_options(config)}
        return kwargs


def launch_options(config: triton.Config) -> dict:
    return dict(config.kwargs, num_warps=config.num_warps, num_stages=config.num_stages)


INTERP_OPTIONS = launch_options(INTERP_GEMM)  # built once: the interpreter's launches run on every call


# ---------------------------------------------------------------------------------------------- dots
# Tests flip this to run the GPU's 16-bit dot path under the interpreter (fine for fp16, not bf16).
INTERPRETER_F32_DOTS = True


def dot_path(t: torch.Tensor) -> tuple:
    """(interp, f32) for launches on `t`. `interp`: the interpreter path, with fixed small configs (CPU tensors
    only ever run under the interpreter). `f32`: fp32 dots. The interpreter computes bf16 dots/arithmetic
    wrongly -> everything in fp32 there; on the GPU fp32 inputs must also use IEEE dots to meet the 1e-4
    accuracy target."""
    interp = KERNELS_INTERPRETED or not t.is_cuda  # is_cuda: no torch.device object built per call
    return interp, t.dtype is torch.float32 or (INTERPRETER_F32_DOTS and interp)


@triton.jit
def to_dot(t, ref_ptr, F32_DOT: tl.constexpr):
    """Cast a tile to the dot operand dtype: fp32 (IEEE path) or the 16-bit dtype of `ref_ptr`."""
    if F32_DOT:
        out = t.to(tl.float32)
    else:
        out = t.to(ref_ptr.dtype.element_ty)
    return out


@triton.jit
def mma(a, b, acc, F32_DOT: tl.constexpr):
    """acc += a @ b with fp32 accumulation; IEEE for fp32 operands (no TF32 rounding)."""
    if F32_DOT:
        acc = tl.dot(a, b, acc, input_precision="ieee")
    else:
        acc = tl.dot(a, b, acc)
    return acc


# Philox4x32 with 7 rounds: the fewest that Random123's authors found Crush-resistant (Salmon et al., SC'11);
# Triton's default of 10 adds a safety margin that a dropout mask does not need.
DROPOUT_PHILOX_ROUNDS = tl.constexpr(7)


@triton.jit
def keep_mask(seed, rows, cols, n_cols, p):
    """Dropout keep mask for a (rows x cols) tile, four decisions per Philox call.

    Element (row, col) takes output col % 4 of the call with counter row * ceil(n_cols / 4) + col // 4: the
    counters are global, so forward, backward and dropout_mask() regenerate the very same bits. `cols` must
    be contiguous and start at a multiple of 4 (every tile here does: block starts and widths are powers of
    two >= 16)."""
    BLOCK_C: tl.constexpr = cols.shape[0]
    quads = tl.min(tl.reshape(cols, (BLOCK_C // 4, 4)), axis=1) // 4
    counters = rows.to(tl.int64)[:, None] * ((n_cols + 3) // 4) + quads[None, :]
    r0, r1, r2, r3 = tl.randint4x(seed, counters, DROPOUT_PHILOX_ROUNDS)
    # join twice -> (rows, quads, 2, 2) with [.., i, j] = r_{2i+j}: row-major, column 4q + 2i + j holds r_{2i+j}
    bits = tl.reshape(tl.join(tl.join(r0, r2), tl.join(r1, r3)), (rows.shape[0], BLOCK_C))
    return tl.random.uint_to_uniform_float(bits) >= p


@triton.jit
def grouped_pid(pid, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
    # Programs sharing GROUP_M row blocks run together so their W tiles stay in L2 (matmul tutorial).
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = tl.minimum(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m
    return pid_m, pid_n
