"""The three contenders of the kernel benchmark, built on identical weights: frozen floor, PEFT, ours.

Each `make_*` returns a closure running one forward + backward (x needs a gradient, as inside a network).
"""
import torch
from torch import nn

from act_lora_fast import FastActLoRALinear

# (T, in, out, r) from the issues: a MiniLM FFN, a mid-size square layer, a 7B-class square layer (CPU);
# on the GPU the headline 7B-class attention projection, a 7B-class MLP up-projection and a BERT-large-class
# layer, where the rank-r passes and launches weigh most.
SHAPES = [(4096, 384, 1536, 8), (4096, 1024, 1024, 16), (2048, 4096, 4096, 16)]
GPU_SHAPES = [(8192, 4096, 4096, 16), (8192, 4096, 11008, 16), (4096, 1024, 1024, 16)]


def _inputs(T, k_in, n_out, r, device, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    base = nn.Linear(k_in, n_out).to(device=device, dtype=dtype).requires_grad_(False)
    x = torch.randn(T, k_in, generator=gen).to(device=device, dtype=dtype).requires_grad_()
    dy = torch.randn(T, n_out, generator=gen).to(device=device, dtype=dtype)
    return base, x, dy


def _step(module, x, dy):
    def run():
        x.grad = None
        module(x).backward(dy)
    return run


def make_floor(T, k_in, n_out, r, device="cpu", dtype=torch.float32):
    base, x, dy = _inputs(T, k_in, n_out, r, device, dtype)
    return _step(base, x, dy)


def make_ours(T, k_in, n_out, r, device="cpu", dtype=torch.float32, backend="auto", track_norms=False, dropout=0.0):
    base, x, dy = _inputs(T, k_in, n_out, r, device, dtype)
    layer = FastActLoRALinear(base, r=r, alpha=2 * r, dropout=dropout, track_norms=track_norms, backend=backend)
    nn.init.normal_(layer.lora_B.weight, std=0.02)
    return _step(layer, x, dy)


def make_peft(T, k_in, n_out, r, device="cpu", dtype=torch.float32, dropout=0.0):
    import peft

    base, x, dy = _inputs(T, k_in, n_out, r, device, dtype)
    config = peft.LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=dropout, target_modules=["0"])
    layer = peft.get_peft_model(nn.Sequential(base), config).base_model.model[0]
    layer.to(device=device, dtype=dtype)
    nn.init.normal_(layer.lora_B["default"].weight, std=0.02)
    return _step(layer, x, dy)


def synchronised(fn):
    """`fn` followed by a CUDA sync when it runs on the GPU (pytest-benchmark times the call), else `fn`."""
    if not torch.cuda.is_available():
        return fn

    def run():
        fn()
        torch.cuda.synchronize()
    return run
