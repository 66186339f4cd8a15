"""Python (host) time of one forward + backward of FastActLoRALinear on the Triton path, kernels stubbed.

    python benchmarks/host_overhead.py [--tokens 64 --features 64 --r 8 --iters 3000 --block 1]
                                       [--path gpu|interpreter] [--baseline REF]

Runs on the CPU: TRITON_INTERPRET=1 lets the host code accept CPU tensors, and every @triton.jit kernel of
ours is replaced by a stub whose launch does nothing, so what is timed is our wrappers, checks, allocations and
small torch ops (the real launches add Triton's own launch cost on a GPU). ``--path gpu`` (default) runs the
host code that CUDA tensors take (tuned GEMM configs looked up per shape, GPU launch options; with
ACT_LORA_TRITON_AUTOTUNE=0, since a stub cannot be benchmarked); ``--path interpreter`` the one CPU tensors
take (fixed configs). Beside it, the same module on the
torch backend and a plain nn.Linear, interleaved in one process; medians of per-iteration process time.
With ``--baseline REF`` (a git commit of this repository) the package as of REF is imported too (a renamed
copy from ``git archive``) and its Triton and torch paths join the interleaved rounds: before/after in one
process, under the same load.
``--block N`` runs N consecutive steps of a variant per turn (default 1: the variants alternate every step, so
each step finds the caches and CPython's specialised bytecode as the other variants left them; with N = 100
each variant mostly runs warm, as the same layer type does when a model applies it block after block).
"""
import argparse
import importlib
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
from torch import nn  # noqa: E402

from act_lora_fast.kernels.triton import backward, forward, utils  # noqa: E402
from act_lora_fast.layer import FastActLoRALinear  # noqa: E402


class InterpretedFunction:
    """A kernel stub; named like the interpreter's kernels so the device checks accept it."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def stub_kernels(modules=(forward, backward)):
    for module in modules:
        for name in dir(module):
            if name.startswith("_") and name.endswith("_kernel"):
                setattr(module, name, InterpretedFunction())


def gpu_dot_path(t):
    return False, t.dtype is torch.float32


def force_gpu_path(modules):
    """Make the host code take the branch CUDA tensors take (`dot_path`; `use_interpreter_path` in older trees)."""
    for module in modules:
        if hasattr(module, "dot_path"):
            module.dot_path = gpu_dot_path
        if hasattr(module, "use_interpreter_path"):
            module.use_interpreter_path = lambda t: False


def import_baseline(ref, path):
    """The package as of git `ref`, imported as `act_lora_fast_at_<ref>` (its imports are relative)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    folder = tempfile.mkdtemp(prefix="host_overhead_")
    archive = subprocess.run(["git", "-C", root, "archive", ref, "act_lora_fast"], check=True,
                             capture_output=True).stdout
    name = "act_lora_fast_at_" + "".join(c if c.isalnum() else "_" for c in ref)
    tar_path = os.path.join(folder, "pkg.tar")
    with open(tar_path, "wb") as f:
        f.write(archive)
    with tarfile.open(tar_path) as tar:
        tar.extractall(folder, filter="data")
    os.rename(os.path.join(folder, "act_lora_fast"), os.path.join(folder, name))
    sys.path.insert(0, folder)
    layer = importlib.import_module(name + ".layer")
    kernels = [importlib.import_module(name + ".kernels.triton." + part) for part in ("forward", "backward", "utils")]
    stub_kernels(kernels[:2])
    if path == "gpu":
        force_gpu_path(kernels)
    return layer.FastActLoRALinear


def step_seconds(module, x, dy, accumulate_grads=False):
    start = time.process_time_ns()
    module(x).backward(dy)
    seconds = (time.process_time_ns() - start) / 1e9
    if not accumulate_grads:  # as optimizer.zero_grad() leaves them: the next backward's grads are stolen
        module.zero_grad(set_to_none=True)
        x.grad = None
    return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--iters", type=int, default=3000)
    parser.add_argument("--block", type=int, default=1, help="consecutive steps of one variant per turn")
    parser.add_argument("--path", choices=("gpu", "interpreter"), default="gpu",
                        help="the host code of CUDA tensors (default) or of CPU tensors")
    parser.add_argument("--baseline", metavar="REF", help="also time the package as of this git commit")
    parser.add_argument("--accumulate-grads", action="store_true",
                        help="keep the gradients between steps (each backward then adds into x.grad, A.grad and "
                             "B.grad); by default they are set to None after every step, outside the timing, as "
                             "a training loop's zero_grad() does")
    args = parser.parse_args()
    torch.set_num_threads(1)
    stub_kernels()
    if args.path == "gpu":
        os.environ["ACT_LORA_TRITON_AUTOTUNE"] = "0"
        force_gpu_path([forward, backward, utils])
    torch.manual_seed(0)
    base = nn.Linear(args.features, args.features)
    variants = {
        "triton (stubbed kernels)": FastActLoRALinear(base, r=args.r, backend="triton"),
        "torch backend": FastActLoRALinear(base, r=args.r, backend="torch"),
        "nn.Linear (x grad only)": nn.Linear(args.features, args.features).requires_grad_(False),
    }
    if args.baseline:
        old_layer = import_baseline(args.baseline, args.path)
        variants[f"triton @ {args.baseline}"] = old_layer(base, r=args.r, backend="triton")
        variants[f"torch @ {args.baseline}"] = old_layer(base, r=args.r, backend="torch")
    x = torch.randn(args.tokens, args.features, requires_grad=True)
    dy = torch.randn(args.tokens, args.features)
    times = {name: [] for name in variants}
    if args.block < 1:
        parser.error("--block must be >= 1")
    turns = -(-args.iters // args.block)
    warm_up = -(-200 // args.block)
    for i in range(turns + warm_up):  # interleaved; the first ~200 steps of each variant are warm-up
        for name, module in variants.items():
            for _ in range(args.block):
                seconds = step_seconds(module, x, dy, args.accumulate_grads)
                if i >= warm_up:
                    times[name].append(seconds)
    print(f"tokens={args.tokens} features={args.features} r={args.r} iters={args.iters} block={args.block} "
          f"path={args.path} "
          f"grads {'accumulated' if args.accumulate_grads else 'set to None after each step'} "
          "(median µs per fwd+bwd)")
    for name, values in times.items():
        print(f"  {name:32s} {statistics.median(values) * 1e6:8.1f}")


if __name__ == "__main__":
    main()
