"""What a comparison runs: the variants (all-layer LoRA, Act-LoRA at each fraction, the baselines) and the seeds."""
import dataclasses
from typing import Optional

from ..._checks import check_choice, check_fraction, check_int
from ...method.profiling import METRICS, UPDATE_METRIC

DEFAULT_FRACTIONS = (0.25, 0.5, 0.75)
BASELINES = ("gradient", "random", "bottom", "first", "last", "block_output", "update", "cost_aware")
DEFAULT_BASELINES = ("gradient", "random", "bottom", "first", "last", "block_output", "cost_aware")
ACTIVATION_METRICS = METRICS + (UPDATE_METRIC,)
SCORED = ("activation", "gradient", "block_output", "update", "cost_aware")   # ranked by a score: a margin


@dataclasses.dataclass(frozen=True)
class VariantSpec:
    """One row of the matrix: ``kind`` is "all", "activation" or a baseline; ``fraction`` of the blocks."""
    kind: str
    fraction: Optional[float] = None

    @property
    def name(self):
        return "all" if self.kind == "all" else f"{self.kind}@{self.fraction:.0%}"


def _check_list(name, value):
    if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__iter__"):
        raise TypeError(f"{name} must be a list, got {value!r}")
    return list(value)


def variant_specs(fractions=DEFAULT_FRACTIONS, baselines=DEFAULT_BASELINES, baseline_fraction=0.5):
    """The run matrix: all-layer LoRA, Act-LoRA at each fraction, each baseline at `baseline_fraction`."""
    fractions, baselines = _check_list("fractions", fractions), _check_list("baselines", baselines)
    for fraction in (*fractions, baseline_fraction):
        check_fraction("fractions", fraction)
    for name in baselines:
        check_choice("baseline", name, BASELINES)
    if not fractions and not baselines:
        raise ValueError("nothing to compare: no Act-LoRA fractions and no baselines were given, so only "
                         "all-layer LoRA would run; give fractions (--fractions 0.5) or baselines "
                         "(--baselines random)")
    specs = [VariantSpec("all")] + [VariantSpec("activation", float(f)) for f in fractions]
    specs += [VariantSpec(b, float(baseline_fraction)) for b in baselines]
    return list(dict.fromkeys(specs))


def seed_list(seeds, base):
    """`seeds` (None: the base config's seed; a count N: 0..N-1; or a list of distinct seeds) as a list."""
    if seeds is None:
        return [base.seed]
    if isinstance(seeds, bool):
        raise TypeError(f"seeds must be a count or a list of ints, got {seeds!r}")
    if isinstance(seeds, int):
        check_int("seeds", seeds, 1)
        return list(range(seeds))
    seeds = _check_list("seeds", seeds)
    if not seeds:
        raise ValueError("seeds is empty")
    for seed in seeds:
        check_int("seeds[]", seed, 0)
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {seeds}")
    return [int(s) for s in seeds]
