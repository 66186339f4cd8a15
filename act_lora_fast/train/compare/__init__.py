"""`compare`: all-layer LoRA vs Act-LoRA vs baselines on one task, over seeds, with paired statistics.

The protocol (one task):

1. **Profiles**, per seed s: the calibration sample of seed s (``calibration_samples`` training examples) is
   profiled once per score the matrix needs (activation ``metric``, block output, gradient with a warmed-up
   head, update score); the seconds each took count in the variant's device-hours.
2. **Selections**, per seed: Act-LoRA at each fraction, each baseline at ``baseline_fraction``; ``random``
   draws fresh blocks from its own seed stream (``RANDOM_STREAM``), never from the training seed, at least
   `random_draws` draws in all; ``cost_aware`` is the set of blocks with the largest total activation score
   whose *predicted* step time (a `CostModel` calibrated on this model and batch shape) fits the step time
   activation@baseline_fraction is predicted to take. With every score-ranked selection the margin between
   the last chosen and the first unchosen block is kept (`selection_margin`): near 0, it is a tie-break.
3. **Timing** (`measure.timing`): every distinct selection's step time and memory on a fresh model copy,
   interleaved over rounds on one real batch, medians, ``clock="process"`` by default. Training runs are
   not timed for the table: on a shared machine they are not comparable.
4. **Training**, per seed, every variant: a full `train` run from the same pretrained weights, data, seed
   and hyper-parameters; only the blocks differ. The score is the dev score of the **last** epoch, never
   the best epoch on the dev set being reported.
5. **Statistics** (`measure.stats`): per variant mean, std and t-based 95 % CI over seeds; the paired
   difference to all-layer LoRA per seed (mean, CI, paired t-test p-value; Wilcoxon from 6 pairs on);
   the task's chance score and whether all-layer LoRA is significantly above it (one-sided t-test, p < 0.05).

``compare.json`` is rewritten after every training run, so a long matrix leaves usable partial results.

The modules: `matrix` (the variants and seeds), `selections` (profiles, draws, the cost-aware choice), `run`
(the protocol), `results` (statistics over seeds, ``compare.json``), `tables` (Markdown, plot), `folder`
(the output folder, resuming).
"""
from .folder import COMPARE_OUTPUTS, SUMMARY_OUTPUTS, claim_compare_dir
from .matrix import (ACTIVATION_METRICS, BASELINES, DEFAULT_BASELINES, DEFAULT_FRACTIONS, SCORED, VariantSpec,
                     seed_list, variant_specs)
from .results import CompareResult, aggregate, load_compare, rows_of, summarize
from .run import ALPHA, DEFAULT_RANDOM_DRAWS, GRADIENT_WARMUP_STEPS, run_compare
from .selections import RANDOM_STREAM, best_within_budget
from .tables import format_table, plot_compare, write_compare_outputs

__all__ = ["ACTIVATION_METRICS", "ALPHA", "BASELINES", "COMPARE_OUTPUTS", "CompareResult", "DEFAULT_BASELINES",
           "DEFAULT_FRACTIONS", "DEFAULT_RANDOM_DRAWS", "GRADIENT_WARMUP_STEPS", "RANDOM_STREAM", "SCORED",
           "SUMMARY_OUTPUTS", "VariantSpec", "aggregate", "best_within_budget", "claim_compare_dir",
           "format_table", "load_compare", "plot_compare", "rows_of", "run_compare", "seed_list", "summarize",
           "variant_specs", "write_compare_outputs"]
