"""pytest-benchmark: one LoRA linear, forward + backward, against the frozen floor and PEFT.

    pytest benchmarks/test_bench_lora_linear.py --benchmark-only

Runs on CUDA (Triton kernels, bf16) when a GPU is present, else on the CPU (fused torch path, fp32); every
backend that runs there is a contender ("ours" is the default backend for the device, "ours[torch]" the fused
torch path on CUDA too, "ours[reference]" the unfused textbook formula).
For ratios measured interleaved in one process, use `python benchmarks/lora_linear_ratios.py`.
"""
import pytest
import torch

from lora_linear_cases import GPU_SHAPES, SHAPES, make_floor, make_ours, make_peft, synchronised

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPE = torch.bfloat16 if DEVICE == "cuda" else torch.float32
CONTENDERS = {
    "floor": make_floor,
    "ours": make_ours,
    "ours+norms": lambda *shape, **kw: make_ours(*shape, track_norms=True, **kw),
    "ours[reference]": lambda *shape, **kw: make_ours(*shape, backend="reference", **kw),
    "peft": make_peft,
}
if DEVICE == "cuda":
    CONTENDERS["ours[torch]"] = lambda *shape, **kw: make_ours(*shape, backend="torch", **kw)


@pytest.mark.parametrize("contender", list(CONTENDERS))
@pytest.mark.parametrize("shape", GPU_SHAPES if DEVICE == "cuda" else SHAPES, ids=lambda s: "T{}-in{}-out{}-r{}".format(*s))
def test_lora_linear_fwd_bwd(benchmark, shape, contender):
    if contender == "peft":
        pytest.importorskip("peft")
    benchmark.group = "lora_linear {} {} T{}-in{}-out{}-r{}".format(DEVICE, str(DTYPE)[6:], *shape)
    step = synchronised(CONTENDERS[contender](*shape, device=DEVICE, dtype=DTYPE))
    rounds = 20 if DEVICE == "cuda" else (3 if shape[1] >= 4096 else 7)
    benchmark.pedantic(step, rounds=rounds, iterations=1, warmup_rounds=2)
