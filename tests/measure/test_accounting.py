import itertools

import pytest
import torch
from torch import nn

from act_lora_fast import FastActLoRALinear
from act_lora_fast.measure import accounting
from act_lora_fast.measure.accounting import StepProfiler, model_memory_bytes, trainable_parameters


class SaveTwo(torch.autograd.Function):
    """Saves exactly what the test says: a (an activation) and w (a parameter) plus a view of a."""

    @staticmethod
    def forward(ctx, a, w):
        ctx.save_for_backward(a, w, a[1:])
        return a * w.sum()

    @staticmethod
    def backward(ctx, grad):
        a, w, _ = ctx.saved_tensors
        return grad * w.sum(), (grad * a).sum().expand_as(w)


class Toy(nn.Module):
    def __init__(self, n_in, n_out):
        super().__init__()
        self.w = nn.Parameter(torch.randn(n_out) * 0.1)
        self.frozen = nn.Linear(n_in, n_out)
        self.frozen.requires_grad_(False)

    def forward(self, x):
        return SaveTwo.apply(self.frozen(x), self.w)


def _run_steps(profiler, model, optimizer, x, steps):
    for _ in range(steps):
        with profiler.phase("forward"):
            loss = model(x).square().mean()
        with profiler.phase("backward"):
            loss.backward()
        with profiler.phase("optimizer"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        profiler.end_step(tokens=x.shape[0])


def test_saved_bytes_count_each_storage_once_and_skip_parameters():
    torch.manual_seed(0)
    n, n_in, n_out = 13, 7, 5
    model = Toy(n_in, n_out)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(n, n_in)
    profiler = StepProfiler(model, optimizer, "cpu", warmup_steps=0)
    with profiler.phase("forward"):
        out = SaveTwo.apply(model.frozen(x), model.w)
    with profiler.phase("backward"):
        out.sum().backward()
    with profiler.phase("optimizer"):
        optimizer.step()
    profiler.end_step(tokens=n)
    memory = profiler.summary()["memory"]
    # frozen(x) is saved twice (itself and a view); the parameter w not at all; the frozen linear saves nothing
    # for a frozen weight and an input that needs no gradient.
    assert memory["saved_for_backward_bytes"] == n * n_out * 4
    assert memory["source"] == "cpu_accounting"


def test_cpu_memory_formulas_with_sgd_momentum():
    torch.manual_seed(1)
    n, n_in, n_out = 11, 9, 6
    model = Toy(n_in, n_out)
    optimizer = torch.optim.SGD([model.w], lr=0.1, momentum=0.9)
    x = torch.randn(n, n_in)
    profiler = StepProfiler(model, optimizer, torch.device("cpu"), warmup_steps=1)
    _run_steps(profiler, model, optimizer, x, steps=3)
    memory = profiler.summary()["memory"]

    params = 4 * (n_out + n_in * n_out + n_out)
    trainable = 4 * n_out
    saved = memory["saved_for_backward_bytes"]
    assert saved >= n * n_out * 4  # the saved activation; square() saves its input as well
    assert memory["param_bytes"] == params
    assert memory["grad_bytes"] == trainable
    assert memory["optimizer_state_bytes"] == trainable  # one momentum buffer per trainable parameter
    assert memory["after_forward_bytes"] == params + trainable + saved  # grads were set to None
    assert memory["peak_backward_bytes"] == params + trainable + trainable + saved
    assert memory["after_optimizer_bytes"] == params + trainable


def test_model_memory_bytes_and_adam_state():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(10, 7), nn.Tanh(), nn.Linear(7, 3))
    model[0].requires_grad_(False)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = model_memory_bytes(model, optimizer)
    assert before["grad_bytes"] == 0 and before["optimizer_state_bytes"] == 0
    assert before["param_bytes"] == 4 * (10 * 7 + 7 + 7 * 3 + 3)
    assert before["trainable_grad_bytes"] == 4 * (7 * 3 + 3)

    model(torch.randn(5, 10)).sum().backward()
    optimizer.step()
    after = model_memory_bytes(model, optimizer)
    assert after["grad_bytes"] == 4 * (7 * 3 + 3)
    # exp_avg and exp_avg_sq per trainable tensor, plus a scalar step counter each
    assert after["optimizer_state_bytes"] >= 2 * 4 * (7 * 3 + 3)
    assert after["optimizer_state_bytes"] <= 2 * 4 * (7 * 3 + 3) + 2 * 8
    assert model_memory_bytes(model)["optimizer_state_bytes"] == 0


def test_trainable_parameters_counts_lora_only():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(17, 23), nn.GELU(), nn.Linear(23, 5))
    model.requires_grad_(False)
    model[0] = FastActLoRALinear(model[0], r=3)
    assert trainable_parameters(model) == 3 * (17 + 23)
    shared = nn.Linear(4, 4)
    assert trainable_parameters(nn.ModuleList([shared, shared])) == 4 * 4 + 4


def test_summary_medians_exclude_warmup_with_a_fake_clock(monkeypatch):
    # Each phase's duration is the next value: step 0 (warm-up) is slow, the others vary.
    durations = [5.0, 5.0, 5.0, 0.010, 0.020, 0.003, 0.030, 0.040, 0.001, 0.020, 0.060, 0.002]
    ticks = itertools.accumulate(itertools.chain.from_iterable((0.0, d) for d in durations))
    monkeypatch.setattr(accounting, "_clock", lambda: next(ticks))
    torch.manual_seed(4)
    model = Toy(6, 4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    profiler = StepProfiler(model, optimizer, "cpu", warmup_steps=1)
    _run_steps(profiler, model, optimizer, torch.randn(8, 6), steps=4)
    summary = profiler.summary()
    assert summary["steps"] == 3 and not summary["includes_warmup"]
    assert summary["forward_ms"] == pytest.approx(20.0)
    assert summary["backward_ms"] == pytest.approx(40.0)
    assert summary["optimizer_ms"] == pytest.approx(2.0)
    assert summary["step_ms"] == pytest.approx(71.0)  # median of 33, 71, 82 ms
    assert summary["tokens_per_s"] == pytest.approx(3 * 8 / (0.033 + 0.071 + 0.082))


def test_phase_times_add_up_under_gradient_accumulation(monkeypatch):
    ticks = itertools.count(0.0, 0.5)  # every phase lasts 0.5 s
    monkeypatch.setattr(accounting, "_clock", lambda: next(ticks))
    model = Toy(3, 2)
    profiler = StepProfiler(model, None, "cpu", warmup_steps=0)
    for _ in range(3):
        with profiler.phase("forward"):
            loss = model(torch.randn(4, 3)).sum()
        with profiler.phase("backward"):
            loss.backward()
    profiler.end_step(tokens=12)
    summary = profiler.summary()
    assert summary["forward_ms"] == pytest.approx(1500.0)
    assert summary["backward_ms"] == pytest.approx(1500.0)
    assert summary["optimizer_ms"] == 0.0
    assert summary["memory"]["optimizer_state_bytes"] == 0


def test_process_clock_times_cpu_seconds(monkeypatch):
    cpu_ticks = itertools.count(0.0, 0.25)
    monkeypatch.setattr(accounting, "_cpu_clock", lambda: next(cpu_ticks))
    monkeypatch.setattr(accounting, "_clock", lambda: pytest.fail("the wall clock must not be read"))
    model = Toy(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    profiler = StepProfiler(model, optimizer, "cpu", warmup_steps=0, clock="process")
    _run_steps(profiler, model, optimizer, torch.randn(4, 3), steps=2)
    summary = profiler.summary()
    assert summary["clock"] == "process"
    assert summary["forward_ms"] == summary["backward_ms"] == summary["optimizer_ms"] == pytest.approx(250.0)
    assert summary["step_ms"] == pytest.approx(750.0)
    with pytest.raises(ValueError, match="unknown clock 'cpu'"):
        StepProfiler(model, optimizer, "cpu", clock="cpu")


def test_short_run_falls_back_to_warmup_steps():
    model = Toy(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    profiler = StepProfiler(model, optimizer, "cpu", warmup_steps=5)
    _run_steps(profiler, model, optimizer, torch.randn(4, 3), steps=2)
    summary = profiler.summary()
    assert summary["includes_warmup"] and summary["steps"] == 2
    assert summary["step_ms"] > 0


def test_bad_usage_raises_clear_errors():
    model = Toy(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match="model"):
        StepProfiler("not a model", optimizer, "cpu")
    with pytest.raises(TypeError, match="optimizer"):
        StepProfiler(model, "sgd", "cpu")
    with pytest.raises(ValueError, match="warmup_steps"):
        StepProfiler(model, optimizer, "cpu", warmup_steps=-1)
    profiler = StepProfiler(model, optimizer, "cpu")
    with pytest.raises(RuntimeError, match="no step"):
        profiler.summary()
    with pytest.raises(ValueError, match="unknown phase 'loss'"):
        with profiler.phase("loss"):
            pass
    with pytest.raises(RuntimeError, match="nest"):
        with profiler.phase("forward"):
            with profiler.phase("backward"):
                pass
    profiler = StepProfiler(model, optimizer, "cpu")
    with pytest.raises(RuntimeError, match="before any phase"):
        profiler.end_step(tokens=3)
    with profiler.phase("forward"):
        model(torch.randn(2, 3))
    with pytest.raises(ValueError, match="tokens"):
        profiler.end_step(tokens=-1)
    with pytest.raises(TypeError, match="model"):
        trainable_parameters([1, 2])
    with pytest.raises(TypeError, match="optimizer"):
        model_memory_bytes(model, optimizer="adam")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_allocator_memory():
    torch.manual_seed(5)
    model = Toy(64, 32).cuda()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(257, 64, device="cuda")
    profiler = StepProfiler(model, optimizer, "cuda", warmup_steps=1)
    _run_steps(profiler, model, optimizer, x, steps=3)
    memory = profiler.summary()["memory"]
    assert memory["source"] == "cuda_allocator"
    assert memory["peak_backward_bytes"] >= memory["after_forward_bytes"] > memory["after_optimizer_bytes"] > 0
    assert memory["saved_for_backward_bytes"] >= 257 * 32 * 4
