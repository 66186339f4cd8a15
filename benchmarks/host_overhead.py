"""Python host overhead per forward + backward of one FastActLoRALinear, against nn.Linear (issue 11: <= 60 µs).

Tiny CPU tensors, one thread, so what is timed is the host code, not arithmetic:
- ``nn.Linear``: the frozen linear (x needs a gradient) - the floor's host cost;
- ``ours[torch]``: our layer on the torch backend (its real ATen ops on tiny tensors);
- ``ours[triton]``: our layer on the triton backend with every Triton launch stubbed to a no-op (Triton's
  interpreter is patched: ``InterpretedFunction.run`` returns at once), so this is our wrapper's Python and
  the torch ops it issues around the kernels (allocations, zero-fills, partial sums, copies); the cost of
  Triton's own launcher (argument binding, ~tens of µs per launch on a GPU host) is not included;
- ``peft``: PEFT's lora.Linear, for reference.
Interleaved round by round (median thread-CPU µs per forward + backward); then the ATen ops each contender issues per
forward + backward, counted with a TorchDispatchMode (what a CUDA run would launch besides the kernels).

    python benchmarks/host_overhead.py                      # T=8, 64 -> 64, r=8
    python benchmarks/host_overhead.py --shape 16,128,256,16 --rounds 9 --iters 2000
    python benchmarks/host_overhead.py --plain-triton-helpers   # what-if: no ConstexprFunction host calls
"""
import argparse
import collections
import gc
import os
import statistics
import sys
import time

os.environ["TRITON_INTERPRET"] = "1"  # before anything imports the kernels: CPU tensors go to the interpreter

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from act_lora_fast import FastActLoRALinear  # noqa: E402


def stub_triton_launches():
    """Every Triton kernel launch (interpreted) returns at once; returns a function undoing it."""
    from triton.runtime.interpreter import InterpretedFunction

    original = InterpretedFunction.run
    InterpretedFunction.run = lambda self, *args, grid, warmup, **kwargs: None
    return lambda: setattr(InterpretedFunction, "run", original)


def plain_triton_helpers():
    """What-if: `triton.cdiv` / `triton.next_power_of_2` as plain Python (in triton 3.9 they are
    ConstexprFunctions, ~3 µs per host call); returns a function undoing it."""
    import triton

    original = triton.cdiv, triton.next_power_of_2
    triton.cdiv = lambda a, b: -(-a // b)
    triton.next_power_of_2 = lambda n: 1 << (int(n) - 1).bit_length()
    return lambda: (setattr(triton, "cdiv", original[0]), setattr(triton, "next_power_of_2", original[1]))


def make_step(kind, T, k_in, n_out, r, seed=0):
    gen = torch.Generator().manual_seed(seed)
    base = nn.Linear(k_in, n_out).requires_grad_(False)
    x = torch.randn(T, k_in, generator=gen).requires_grad_()
    dy = torch.randn(T, n_out, generator=gen)
    if kind == "nn.Linear":
        module = base
    elif kind == "peft":
        import peft

        config = peft.LoraConfig(r=r, lora_alpha=2 * r, target_modules=["0"])
        module = peft.get_peft_model(nn.Sequential(base), config).base_model.model[0]
    else:
        backend = kind[len("ours["):-1]
        module = FastActLoRALinear(base, r=r, alpha=2 * r, backend=backend)

    params = [p for p in module.parameters() if p.requires_grad]

    def step():
        x.grad = None
        for p in params:  # as optimizer.zero_grad(set_to_none=True): AccumulateGrad steals, adds nothing
            p.grad = None
        module(x).backward(dy)
    return step


class OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket.__name__)] += 1
        return func(*args, **(kwargs or {}))


def measure(steps, rounds, iters):
    for step in steps.values():  # warm-up
        for _ in range(20):
            step()
    times = {name: [] for name in steps}
    gc.disable()
    try:
        for _ in range(rounds):
            for name, step in steps.items():
                start = time.thread_time()  # CPU time: preemption by other processes does not count
                for _ in range(iters):
                    step()
                times[name].append(1e6 * (time.thread_time() - start) / iters)
    finally:
        gc.enable()
    return times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="8,64,64,8", help="T,IN,OUT,R (tiny: host cost dominates)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--iters", type=int, default=1000, help="forward + backward calls per contender per round")
    parser.add_argument("--plain-triton-helpers", action="store_true",
                        help="what-if: host calls of triton.cdiv / next_power_of_2 replaced by plain Python")
    args = parser.parse_args(argv)
    T, k_in, n_out, r = (int(v) for v in args.shape.split(","))
    torch.set_num_threads(1)
    undo = stub_triton_launches()
    undo_helpers = plain_triton_helpers() if args.plain_triton_helpers else (lambda: None)
    try:
        kinds = ["nn.Linear", "ours[torch]", "ours[triton]", "peft"]
        steps = {kind: make_step(kind, T, k_in, n_out, r) for kind in kinds}
        times = measure(steps, args.rounds, args.iters)
        counts = {}
        for kind, step in steps.items():
            with OpCounter() as counter:
                step()
            counts[kind] = counter.ops
    finally:
        undo()
        undo_helpers()
    print(f"host overhead per forward + backward, T={T} in={k_in} out={n_out} r={r}, 1 thread, {args.rounds} "
          f"interleaved rounds x {args.iters} calls, torch {torch.__version__}"
          + (", triton.cdiv/next_power_of_2 as plain Python" if args.plain_triton_helpers else ""))
    floor = times["nn.Linear"]
    for kind in kinds:
        med = statistics.median(times[kind])
        extra = statistics.median(a - b for a, b in zip(times[kind], floor))
        ops = counts[kind]
        print(f"  {kind:<13} {med:7.1f} µs  (+{extra:6.1f} µs over nn.Linear; rounds "
              + " ".join(f"{t:.0f}" for t in times[kind]) + f")  {sum(ops.values())} ATen ops")
    for kind in kinds[1:3]:
        print(f"  ATen ops of {kind}: " + ", ".join(f"{name}×{n}" for name, n in sorted(counts[kind].items())))
    print("  (ours[triton]: Triton launches stubbed; each real launch adds Triton's launcher cost on top)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
