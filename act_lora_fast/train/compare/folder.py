"""A comparison's output folder: what it owns, and the finished runs a resumed comparison keeps."""
import json
import math
import os

from ..._checks import check_int
from ..outputs import check_output_dir, claim_output_dir

COMPARE_OUTPUTS = ("compare.md", "compare.json", "compare.png")
SUMMARY_OUTPUTS = ("summary.md", "summary.json", "summary.png")


def claim_compare_dir(output_dir, specs, *, seeds, random_draws, overwrite=False):
    """The output-folder rule (see `outputs`) for a compare: it owns ``compare.*`` and one folder per variant
    (per random draw). Refuses (FileExistsError) a folder holding an earlier compare's files unless
    `overwrite`, which deletes them (and only them) first."""
    check_int("random_draws", random_draws, 1)  # before the folder exists: a bad argument leaves nothing
    draws = math.ceil(random_draws / len(seeds)) * len(seeds)  # as run_compare spreads them over the seeds
    folders = []
    for spec in specs:
        name = slug(spec.name)
        folders += [f"{name}-draw{d}" for d in range(draws)] if spec.kind == "random" else [name]
    check_output_dir(output_dir)
    for name in folders:  # empty leftovers are no earlier results
        path = os.path.join(output_dir, name)
        if os.path.isdir(path) and not os.listdir(path):
            os.rmdir(path)
    return claim_output_dir(output_dir, overwrite=overwrite, owned=COMPARE_OUTPUTS + tuple(folders))


def previous_runs(output_dir, meta):
    """``{(variant, seed, draw, layers): run}`` from `output_dir`'s compare.json, if its settings match."""
    path = os.path.join(output_dir, "compare.json")
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as handle:
        old = json.load(handle)
    for key in ("model", "metric", "train", "baseline_fraction", "gradient_warmup_steps"):
        if old.get(key) != meta.get(key):
            raise ValueError(f"cannot resume from {path}: its {key} is {old.get(key)!r}, this run's is "
                             f"{meta.get(key)!r}")
    found = {}
    for variant in old.get("variants", []):
        for run in variant.get("runs", []):
            found[(variant["name"], run["seed"], run.get("draw"), tuple(run["layers"]))] = run
    return found


def slug(name):
    return name.replace("@", "-").replace("%", "pct").replace("=", "")
