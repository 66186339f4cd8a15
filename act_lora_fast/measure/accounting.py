"""Cost accounting for training steps: per-phase time and memory, on CUDA and on CPU.

Usage::

    profiler = StepProfiler(model, optimizer, device, warmup_steps=1)
    for batch in batches:
        with profiler.phase("forward"):
            loss = model(**batch).loss
        with profiler.phase("backward"):
            loss.backward()
        with profiler.phase("optimizer"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        profiler.end_step(tokens=batch["input_ids"].numel())
    print(profiler.summary())

Memory on CUDA comes from the caching allocator (peak and current allocation). CPU has no allocator
statistics worth trusting (glibc keeps freed pages), so there memory is *accounted*: the bytes autograd saves
for backward (counted through ``saved_tensors_hooks``, one count per storage, parameters excluded) plus
parameter, gradient and optimizer-state bytes. That is the part of the footprint a LoRA selection changes.
"""
import contextlib
import statistics
import time

import torch

PHASES = ("forward", "backward", "optimizer")
CLOCKS = ("wall", "process")
# module-level so tests can substitute deterministic clocks
_clock = time.perf_counter
_cpu_clock = time.process_time


def _storage_key_and_bytes(tensor):
    """(key, nbytes) of the storage behind `tensor`, so views of one buffer count once."""
    try:
        storage = tensor.untyped_storage()
        return (tensor.device.type, tensor.device.index, storage.data_ptr()), storage.nbytes()
    except (RuntimeError, NotImplementedError):  # sparse, nested or otherwise storage-less tensors
        return ("tensor", id(tensor)), tensor.numel() * tensor.element_size()


def _unique_bytes(tensors):
    seen = {}
    for tensor in tensors:
        key, nbytes = _storage_key_and_bytes(tensor)
        seen[key] = nbytes
    return sum(seen.values())


def trainable_parameters(model):
    """Number of parameters that receive gradients (shared parameters counted once)."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _optimizer_state_tensors(optimizer):
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                yield value


def model_memory_bytes(model, optimizer=None):
    """Bytes held by the model and optimizer, independent of any batch.

    Returns ``param_bytes`` (parameters and buffers), ``grad_bytes`` (gradients that exist now),
    ``trainable_grad_bytes`` (what the gradients of all trainable parameters take once backward has run)
    and ``optimizer_state_bytes`` (0 until the optimizer has taken its first step).
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer or None, got {type(optimizer).__name__}")
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    return {
        "param_bytes": _unique_bytes(params + list(model.buffers())),
        "grad_bytes": _unique_bytes(p.grad for p in params if p.grad is not None),
        "trainable_grad_bytes": sum(p.numel() * p.element_size() for p in trainable),
        "optimizer_state_bytes": _unique_bytes(_optimizer_state_tensors(optimizer)) if optimizer else 0,
    }


class _SavedTensorCounter:
    """Counts the bytes autograd saves for backward during a forward, one count per storage.

    Parameters are excluded: they live in memory anyway and are counted as parameter bytes.
    """

    def __init__(self, exclude_keys):
        self.exclude_keys = exclude_keys
        self.storages = {}

    def pack(self, tensor):
        key, nbytes = _storage_key_and_bytes(tensor)
        if key not in self.exclude_keys:
            self.storages[key] = nbytes
        return tensor

    @staticmethod
    def unpack(tensor):
        return tensor

    @property
    def nbytes(self):
        return sum(self.storages.values())


class StepProfiler:
    """Per-step forward / backward / optimizer time and memory.

    On CUDA every phase is bracketed by ``torch.cuda.synchronize`` so the wall clock measures the kernels,
    and memory comes from the caching allocator (peak statistics reset at the start of each forward).
    On CPU memory is accounted (see the module docstring). A phase may occur several times in one step
    (gradient accumulation): its times add up, and the step keeps the largest saved-for-backward count.
    ``clock="process"`` times phases in CPU seconds of this process instead of wall-clock seconds: on a
    shared CPU machine it ignores the time other processes hold the cores, so comparisons stay stable.
    Use it with ``torch.set_num_threads(1)`` (OpenMP threads spin while waiting, which counts as CPU time);
    on CUDA only the wall clock measures the device.

    Args:
        model: the ``nn.Module`` being trained.
        optimizer: its ``torch.optim.Optimizer`` (or None when only forward/backward are profiled).
        device: the device the step runs on (``torch.device`` or string); ``cuda`` selects allocator stats.
        warmup_steps: leading steps left out of the summary (allocator warm-up, lazy init, autotuning).
        clock: ``"wall"`` (default) or ``"process"`` (CPU time of this process; CPU devices only).
    """

    def __init__(self, model, optimizer, device, warmup_steps=1, *, clock="wall"):
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer or None, got "
                            f"{type(optimizer).__name__}")
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an int >= 0, got {warmup_steps!r}")
        self.model, self.optimizer = model, optimizer
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        if self.cuda and not torch.cuda.is_available():
            raise RuntimeError(f"device {self.device} requested but CUDA is not available")
        if clock not in CLOCKS:
            raise ValueError(f"unknown clock {clock!r}; choose one of {', '.join(CLOCKS)}")
        if clock == "process" and self.cuda:
            raise ValueError("clock='process' cannot time CUDA work (it runs asynchronously on the device); "
                             "use clock='wall'")
        self.warmup_steps, self.clock = warmup_steps, clock
        self.steps = []  # one dict per finished step
        self._current = self._new_step()
        self._active_phase = None

    @staticmethod
    def _new_step():
        return {"times": dict.fromkeys(PHASES, 0.0), "memory": {}, "saved_bytes": 0, "phases_run": 0}

    def _sync(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def _param_storage_keys(self):
        keys = set()
        for tensor in list(self.model.parameters()) + list(self.model.buffers()):
            keys.add(_storage_key_and_bytes(tensor)[0])
        return keys

    @contextlib.contextmanager
    def phase(self, name):
        """Time one phase of the current step; the forward phase also measures saved-for-backward bytes."""
        if name not in PHASES:
            raise ValueError(f"unknown phase {name!r}; expected one of {', '.join(PHASES)}")
        if self._active_phase is not None:
            raise RuntimeError(f"phase {name!r} started inside phase {self._active_phase!r}; phases don't nest")
        self._active_phase = name
        memory = self._current["memory"]
        counter = None
        self._sync()
        if self.cuda and name == "forward":
            torch.cuda.reset_peak_memory_stats(self.device)
        now = _clock if self.clock == "wall" else _cpu_clock
        start = now()
        try:
            if name == "forward":
                counter = _SavedTensorCounter(self._param_storage_keys())
                with torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack):
                    yield self
            else:
                yield self
            self._sync()
        finally:
            self._current["times"][name] += now() - start
            self._current["phases_run"] += 1
            self._active_phase = None
        # Memory is read after the timer stops, so the accounting never shows up in the phase's time.
        if counter is not None:
            self._current["saved_bytes"] = max(self._current["saved_bytes"], counter.nbytes)
        if self.cuda:
            if name == "forward":
                memory["after_forward_bytes"] = torch.cuda.memory_allocated(self.device)
            elif name == "backward":
                memory["peak_backward_bytes"] = torch.cuda.max_memory_allocated(self.device)
            else:
                memory["after_optimizer_bytes"] = torch.cuda.memory_allocated(self.device)
                memory["peak_step_bytes"] = torch.cuda.max_memory_allocated(self.device)
        if name in ("forward", "optimizer"):
            # Gradients and optimizer state as they stand now (grads set to None by zero_grad are gone).
            memory[f"model_after_{name}"] = model_memory_bytes(self.model, self.optimizer)

    def end_step(self, tokens):
        """Close the current step; `tokens` is the number of tokens it processed (for throughput)."""
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
            raise ValueError(f"tokens must be an int >= 0, got {tokens!r}")
        if self._active_phase is not None:
            raise RuntimeError(f"end_step called inside phase {self._active_phase!r}")
        step = self._current
        if not step["phases_run"]:
            raise RuntimeError("end_step called before any phase of the step was profiled")
        step["tokens"] = tokens
        step["memory"] = self._step_memory(step)
        self.steps.append(step)
        self._current = self._new_step()

    def _step_memory(self, step):
        recorded = step["memory"]
        model_now = model_memory_bytes(self.model, self.optimizer)
        after_forward = recorded.get("model_after_forward", model_now)
        after_optimizer = recorded.get("model_after_optimizer", model_now)
        saved = step["saved_bytes"]
        params, opt_state = model_now["param_bytes"], after_optimizer["optimizer_state_bytes"]
        memory = {
            "saved_for_backward_bytes": saved,
            "param_bytes": params,
            "grad_bytes": model_now["trainable_grad_bytes"],
            "optimizer_state_bytes": opt_state,
        }
        if self.cuda:
            memory.update({key: recorded.get(key, 0) for key in (
                "after_forward_bytes", "peak_backward_bytes", "after_optimizer_bytes", "peak_step_bytes")})
            memory["source"] = "cuda_allocator"
        else:
            memory.update({
                "after_forward_bytes": params + after_forward["grad_bytes"]
                + after_forward["optimizer_state_bytes"] + saved,
                "peak_backward_bytes": params + model_now["trainable_grad_bytes"] + opt_state + saved,
                "after_optimizer_bytes": params + after_optimizer["grad_bytes"] + opt_state,
            })
            memory["source"] = "cpu_accounting"
        return memory

    def summary(self):
        """Medians of the post-warmup steps' phase times, throughput, and the largest memory seen.

        When a run is shorter than the warm-up, the warm-up steps are used (``includes_warmup`` is True).
        """
        if not self.steps:
            raise RuntimeError("no step recorded yet: call end_step(tokens) after each step's phases")
        measured = self.steps[self.warmup_steps:]
        includes_warmup = not measured
        measured = measured or self.steps
        result = {}
        for name in PHASES:
            result[f"{name}_ms"] = statistics.median(s["times"][name] for s in measured) * 1e3
        step_seconds = [sum(s["times"].values()) for s in measured]
        result["step_ms"] = statistics.median(step_seconds) * 1e3
        total_seconds = sum(step_seconds)
        result["tokens_per_s"] = sum(s["tokens"] for s in measured) / total_seconds if total_seconds else 0.0
        result["steps"] = len(measured)
        result["clock"] = self.clock
        result["includes_warmup"] = includes_warmup
        memory = {}
        for key, value in measured[0]["memory"].items():
            memory[key] = value if key == "source" else max(s["memory"][key] for s in measured)
        result["memory"] = memory
        return result
