"""Predict what a LoRA selection costs before training, and pick the best blocks within a budget.

The model, for a selection S of blocks (L blocks in all, indexed from the embeddings up)::

    cost(S) ≈ c₀ + c_adapter · Σ_{i∈S} a_i + c_depth · Σ_{i ≥ min S} d_i

- c₀: everything a step does whatever S is: the frozen forward, the head, the optimizer's fixed overhead;
- c_adapter · Σ a_i: the adapters' own work and memory (their matmuls, weights, grads, AdamW moments and
  the inputs they save for backward), proportional to the number of selected blocks, each weighted by its
  LoRA parameter count a_i relative to the mean (1 for identical blocks);
- c_depth · Σ d_i: the backward pass through frozen blocks, which runs from the top down to the *lowest*
  selected block whatever k is, with the activations those blocks keep for it (d_i: a block's parameter
  count relative to the mean, again 1 for identical blocks).

That is what the scaling suite measures. MiniLM (6 blocks, CPU, one thread, batch 8 × 64, r = 8, all linears,
AdamW): step ≈ 201 ms + 7.5 ms per selected block + 26 ms per block of backward depth, memory ≈ 87 MiB +
6.2 MiB per selected block + 12.8 MiB per block of depth; LoRA on the bottom block alone costs 0.90 of all
six blocks' step, on the top block alone 0.59 (benchmarks/results/minilm_cpu). One cost model holds a (c₀, c_adapter, c_depth) triple per predicted quantity (step, forward,
backward and optimizer time, and memory), fitted with non-negative least squares (costs are not negative)
on a few measured selections: calibrated once per model, batch shape and device.
"""
import dataclasses
import json
import math
import numbers
import os

import numpy as np

from .._checks import check_int, check_layers as _check_layers, check_positive, ranking_of, score_list
from .._io import write_json
from ..model.anatomy import find_blocks
from ..model.inject import count_lora_parameters

TARGETS = ("step_ms", "forward_ms", "backward_ms", "optimizer_ms", "memory_bytes")
COST_MODEL_FORMAT = "act_lora_fast.CostModel/1"


def default_calibration(num_blocks):
    """The selections a cost model is calibrated on: top block, bottom block, all blocks, the top half.

    They span the model's three terms (one adapter at minimum and at full depth, all adapters, half of
    each), so every other selection is an interpolation.
    """
    check_int("num_blocks", num_blocks, 1)
    half = math.ceil(num_blocks / 2)
    selections = [[num_blocks - 1], [0], list(range(num_blocks)), list(range(num_blocks - half, num_blocks))]
    unique = []
    for layers in selections:
        if layers not in unique:
            unique.append(layers)
    return unique


def _normalised(weights, num_blocks, name):
    if weights is None:
        return [1.0] * num_blocks
    if isinstance(weights, (str, bytes, dict)) or not hasattr(weights, "__iter__") or not all(
            isinstance(w, numbers.Real) and not isinstance(w, bool) for w in weights):
        raise TypeError(f"{name} must be a list of {num_blocks} numbers, got {weights!r}")
    weights = [float(w) for w in weights]
    if len(weights) != num_blocks or any(not w > 0 or not math.isfinite(w) for w in weights):
        raise ValueError(f"{name} must be {num_blocks} positive finite numbers, got {weights}")
    mean = sum(weights) / num_blocks
    return [w / mean for w in weights]


def _check_points(points):
    """Measured points as a list of dicts with ``layers`` and numeric target values."""
    if isinstance(points, (str, bytes, dict)) or not hasattr(points, "__iter__"):
        raise TypeError(f"points must be a list of dicts with 'layers' and measured values, got "
                        f"{type(points).__name__}")
    points = list(points)
    for index, point in enumerate(points):
        if not isinstance(point, dict) or "layers" not in point:
            raise TypeError(f"calibration point {index} must be a dict with 'layers' and measured values, "
                            f"got {point!r}")
        for target in TARGETS:
            value = point.get(target)
            if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
                raise TypeError(f"calibration point {index}: {target} must be a number, got {value!r}")
    return points


@dataclasses.dataclass
class CostModel:
    """Step time and memory of any selection from a few measured ones (see the module docstring).

    ``coefficients[target] = [c₀, c_adapter, c_depth]`` for each target in ``TARGETS``;
    ``adapter_weights`` / ``depth_weights`` are per-block sizes relative to the mean (1.0 for identical
    blocks); ``meta`` records what it was calibrated on (model, batch shape, device, rank);
    ``calibration`` the measured points it was fitted to.
    """
    num_blocks: int
    adapter_weights: list = None
    depth_weights: list = None
    coefficients: dict = dataclasses.field(default_factory=dict)
    meta: dict = dataclasses.field(default_factory=dict)
    calibration: list = dataclasses.field(default_factory=list)

    def __post_init__(self):
        check_int("num_blocks", self.num_blocks, 1)
        self.adapter_weights = _normalised(self.adapter_weights, self.num_blocks, "adapter_weights")
        self.depth_weights = _normalised(self.depth_weights, self.num_blocks, "depth_weights")
        if not isinstance(self.coefficients, dict):
            raise TypeError(f"coefficients must be a dict of targets to [c0, c_adapter, c_depth], got "
                            f"{type(self.coefficients).__name__}")
        for target, coefs in self.coefficients.items():
            if (target not in TARGETS or isinstance(coefs, (str, bytes)) or not hasattr(coefs, "__len__")
                    or len(coefs) != 3 or not all(isinstance(c, numbers.Real) and not isinstance(c, bool)
                                                  for c in coefs)):
                raise ValueError(f"coefficients must map targets in {TARGETS} to [c0, c_adapter, c_depth], "
                                 f"got {target!r}: {coefs!r}")
        self.coefficients = {t: [float(c) for c in v] for t, v in self.coefficients.items()}

    @classmethod
    def from_model(cls, model, *, target_modules="all-linear", r=8, blocks=None):
        """An uncalibrated cost model with the block weights of `model` (LoRA and block parameter counts)."""
        stack = find_blocks(model, blocks)
        adapter = [count_lora_parameters(model, [i], target_modules, r, stack.path) for i in range(len(stack))]
        depth = [sum(p.numel() for p in block.parameters()) for block in stack.blocks]
        return cls(num_blocks=len(stack), adapter_weights=adapter, depth_weights=depth)

    # ------------------------------------------------------------------ the model
    def features(self, layers):
        """[1, Σ_{i∈S} a_i, Σ_{i ≥ min S} d_i] for selection `layers`."""
        layers = _check_layers(layers, self.num_blocks)
        return np.array([1.0, sum(self.adapter_weights[i] for i in layers),
                         sum(self.depth_weights[layers[0]:])])

    def fit(self, points):
        """Fit every target present in all `points` (dicts with ``layers`` and measured values); returns self."""
        points = _check_points(points)
        if not points:
            raise ValueError("no calibration points: measure at least one selection")
        targets = [t for t in TARGETS if all(t in p for p in points)]
        if not targets:
            raise ValueError(f"calibration points carry none of the targets {TARGETS}")
        from scipy.optimize import nnls  # scipy loads slowly; only fitting needs it

        design = np.stack([self.features(p["layers"]) for p in points])
        coefficients = {}
        for target in targets:
            values = np.array([float(p[target]) for p in points])
            if not np.isfinite(values).all():
                raise ValueError(f"calibration values for {target} must be finite, got {values.tolist()}")
            # Scale columns to unit norm so NNLS's tolerance does not depend on the units (ms vs bytes).
            scale = np.linalg.norm(design, axis=0)
            solution, _ = nnls(design / scale, values)
            coefficients[target] = (solution / scale).tolist()
        self.coefficients = coefficients
        self.calibration = [{"layers": _check_layers(p["layers"], self.num_blocks),
                             **{t: float(p[t]) for t in targets}} for p in points]
        return self

    def _require_fitted(self):
        if not self.coefficients:
            raise RuntimeError("the cost model is not calibrated: call fit(points) or calibrate_cost_model")

    def predict(self, layers):
        """Predicted ``{target: value}`` (times in ms, memory in bytes) for selection `layers`."""
        self._require_fitted()
        x = self.features(layers)
        return {target: float(x @ np.array(coefs)) for target, coefs in self.coefficients.items()}

    def validate(self, points):
        """Relative errors (predicted / measured - 1) on measured `points` the calibration did not use."""
        self._require_fitted()
        points = _check_points(points)
        rows, errors = [], {t: [] for t in self.coefficients}
        for point in points:
            predicted = self.predict(point["layers"])
            row = {"layers": _check_layers(point["layers"], self.num_blocks)}
            for target in self.coefficients:
                if target in point and point[target]:
                    error = predicted[target] / float(point[target]) - 1.0
                    errors[target].append(error)
                    row[target] = {"measured": float(point[target]), "predicted": predicted[target],
                                   "error": error}
            rows.append(row)
        summary = lambda f: {t: (f(v) if v else float("nan")) for t, v in errors.items()}  # noqa: E731
        return {"points": rows,
                "max_abs_error": summary(lambda v: max(abs(e) for e in v)),
                "mean_abs_error": summary(lambda v: sum(abs(e) for e in v) / len(v))}

    # ------------------------------------------------------------------ files
    def to_dict(self):
        return {"format": COST_MODEL_FORMAT, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data):
        if not isinstance(data, dict):
            raise TypeError(f"a cost model is a dict, got {type(data).__name__}")
        data = dict(data)
        if data.pop("format", COST_MODEL_FORMAT) != COST_MODEL_FORMAT:
            raise ValueError(f"not a cost model: format is not {COST_MODEL_FORMAT!r}")
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown cost-model field(s) {unknown}")
        if "num_blocks" not in data:
            raise ValueError("a cost model needs num_blocks")
        return cls(**data)

    def save(self, path):
        """Write JSON atomically (temp file + os.replace)."""
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path):
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a file path (str or os.PathLike), got {type(path).__name__}")
        if os.path.isdir(path):
            raise IsADirectoryError(f"{os.fspath(path)} is a directory; expected a cost model JSON file")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"cost model file not found: {path}")
        with open(path, encoding="utf-8") as handle:
            try:
                data = json.load(handle)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}: invalid JSON at line {err.lineno}, column {err.colno}: "
                                 f"{err.msg}") from None
            except UnicodeDecodeError as err:
                raise ValueError(f"{path}: not UTF-8 text ({err})") from None
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as err:
            raise type(err)(f"{os.fspath(path)}: {err}") from None

    # ------------------------------------------------------------------ budgets
    def select_within_budget(self, scores, *, budget_ms=None, budget_bytes=None):
        """The most important blocks whose predicted cost fits the budget(s), as a sorted list.

        Blocks are taken greedily in score order (ties: lower index first); a block whose addition would
        break a budget is skipped and the next one is tried, since a deeper block adds less backward depth.
        Raises ValueError when not even one block fits.
        """
        scores = score_list(scores)
        if len(scores) != self.num_blocks:
            raise ValueError(f"{len(scores)} scores for a cost model of {self.num_blocks} blocks")
        budgets = {"step_ms": budget_ms, "memory_bytes": budget_bytes}
        budgets = {target: value for target, value in budgets.items() if value is not None}
        if not budgets:
            raise ValueError("give budget_ms and/or budget_bytes")
        for target, value in budgets.items():
            check_positive(target.replace("step_ms", "budget_ms").replace("memory_bytes", "budget_bytes"), value)
            if target not in self.coefficients:
                raise ValueError(f"the cost model does not predict {target}; calibrate it with that measurement")

        def fits(layers):
            predicted = self.predict(layers)
            return all(predicted[target] <= limit for target, limit in budgets.items())

        chosen = []
        for index in ranking_of(scores):
            if fits(chosen + [index]):
                chosen.append(index)
        if not chosen:
            def overshoot(i):
                predicted = self.predict([i])
                return max(predicted[t] / limit for t, limit in budgets.items())

            cheapest = min(range(len(scores)), key=overshoot)
            predicted = self.predict([cheapest])
            described = ", ".join(f"{t} {predicted[t]:.4g} > {limit:.4g}" for t, limit in budgets.items()
                                  if predicted[t] > limit)
            raise ValueError(f"no block fits the budget: even the cheapest, block {cheapest} alone, is "
                             f"predicted at {described}")
        return sorted(chosen)


# ---------------------------------------------------------------------------------------------- calibration
def calibrate_cost_model(model, *, batch=None, batch_size=16, seq_len=128, selections=None, settings=None,
                         rounds=2, device=None, progress=True):
    """Measure a few selections on `model` (training steps on fresh copies) and fit a `CostModel`.

    `batch` (a dict with ``input_ids``, ``attention_mask``, ``labels``) fixes the batch shape; without it
    a random batch of `batch_size` × `seq_len` tokens on `device` (default: the model's) is used; each
    measured copy of the model goes to the batch's device. `selections` default to
    `default_calibration`; `settings` is a `act_lora_fast.measure.harness.BenchSettings` (rank, targets, steps).
    """
    import torch

    from .harness import Variant, check_batch, check_settings, measure_variants, synthetic_batch

    settings = check_settings(settings)
    cost_model = CostModel.from_model(model, target_modules=settings.target_modules, r=settings.r)
    selections = selections if selections is not None else default_calibration(cost_model.num_blocks)
    selections = [_check_layers(s, cost_model.num_blocks) for s in selections]
    if batch is None:
        batch = synthetic_batch(model, batch_size, seq_len, device=device)
    check_batch(batch)
    measured = measure_variants(model, [Variant(tuple(s)) for s in selections], batch, settings,
                                rounds=rounds, progress=progress)
    points = [{"layers": list(v.layers), **{t: r[t] for t in TARGETS}} for v, r in measured.items()]
    device = batch["input_ids"].device
    name = getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
    cost_model.meta = {"model": name,
                       "batch_shape": list(batch["input_ids"].shape), "device": str(device), "r": settings.r,
                       "target_modules": settings.target_modules, "clock": settings.clock,
                       "threads": torch.get_num_threads(), "torch": torch.__version__}
    return cost_model.fit(points)


def estimate_cost(model, layers, *, cost_model=None, **calibration):
    """Predicted step time (ms; forward / backward / optimizer split) and memory (bytes) of `layers`.

    With a calibrated `cost_model` this is instant; without one, `model` is calibrated first (keyword
    arguments go to `calibrate_cost_model`), which trains a few selections for a few steps.
    """
    num_blocks = len(find_blocks(model))
    _check_layers(layers, num_blocks)  # before a calibration that trains for minutes
    if cost_model is None:
        cost_model = calibrate_cost_model(model, **calibration)
    elif calibration:
        raise ValueError(f"calibration options {sorted(calibration)} are unused with a given cost_model")
    if not isinstance(cost_model, CostModel):
        raise TypeError(f"cost_model must be a CostModel, got {type(cost_model).__name__}")
    if cost_model.num_blocks != num_blocks:
        raise ValueError(f"the cost model was calibrated for {cost_model.num_blocks} blocks, the model has "
                         f"{num_blocks}")
    return cost_model.predict(layers)


# ---------------------------------------------------------------------------------------------- budgets
def select_within_budget(scores, cost_model, *, budget_ms=None, budget_bytes=None):
    """The most important blocks whose predicted cost fits the budget(s); see `CostModel.select_within_budget`."""
    if isinstance(cost_model, dict):
        cost_model = CostModel.from_dict(cost_model)
    if not isinstance(cost_model, CostModel):
        raise TypeError(f"cost_model must be a CostModel, got {type(cost_model).__name__}")
    return cost_model.select_within_budget(scores, budget_ms=budget_ms, budget_bytes=budget_bytes)
