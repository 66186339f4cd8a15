"""A comparison's output folder: what it owns, and the finished runs a resumed comparison keeps."""
import json
import math
import os

from ..._checks import check_int
from ...model.adapters import CONFIG_NAME, WEIGHTS_NAME
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


def previous_runs(output_dir, options):
    """``{(variant, seed, draw, layers): run}``: the finished runs of `output_dir`'s compare.json, when it
    records the same result-changing `options` (see `train.config.result_options`); ValueError naming each
    option that differs, or what is malformed in the file."""
    path = os.path.join(output_dir, "compare.json")
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as handle:
            old = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot resume from {path}: not valid JSON ({err})") from None
    if not isinstance(old, dict) or not isinstance(old.get("variants"), list):
        raise ValueError(f"cannot resume from {path}: not a compare.json (needs an object with a 'variants' list)")
    found = {}
    for i, variant in enumerate(old["variants"]):
        runs = variant.get("runs") if isinstance(variant, dict) else None
        if not isinstance(runs, list) or not isinstance(variant.get("name"), str):
            raise ValueError(f"cannot resume from {path}: variants[{i}] is not a variant (needs 'name' and a "
                             "'runs' list)")
        for j, run in enumerate(runs):
            problem = _run_problem(run)
            if problem:
                raise ValueError(f"cannot resume from {path}: variants[{i}].runs[{j}] ({variant['name']}) {problem}")
            found[(variant["name"], run["seed"], run.get("draw"), tuple(run["layers"]))] = run
    recorded = old.get("options")
    if not isinstance(recorded, dict):
        raise ValueError(f"cannot resume from {path}: it does not record every option its runs used (an older "
                         "act-lora wrote it), so kept runs could differ from new ones; start again with "
                         "overwrite=True (--overwrite)")
    differ = [key for key in sorted(set(recorded) | set(options)) if recorded.get(key) != options.get(key)]
    if differ:
        shown = "; ".join(f"{key} {recorded.get(key)!r} there, {options.get(key)!r} now" for key in differ)
        raise ValueError(f"cannot resume from {path}: its runs used other options: {shown}. Resume with the "
                         "same options, or start again with overwrite=True (--overwrite)")
    return found


def _run_problem(run):
    def is_int(value):
        return isinstance(value, int) and not isinstance(value, bool)

    if not isinstance(run, dict):
        return f"is a {type(run).__name__}, not a run"
    if not is_int(run.get("seed")):
        return "has no integer 'seed'"
    if not isinstance(run.get("layers"), list) or not all(is_int(i) for i in run["layers"]):
        return "has no 'layers' list of block indices"
    if run.get("draw") is not None and not is_int(run["draw"]):
        return "has a 'draw' that is not an integer"
    if not isinstance(run.get("score"), (int, float)) or isinstance(run["score"], bool):
        return "has no numeric 'score'"
    return None


def run_folder_intact(output_dir, run):
    """Whether a kept run's folder (``run["output_dir"]``, under `output_dir`) still holds its finished
    report, and its adapter when it saved one: a run whose files are gone is trained again."""
    folder = run.get("output_dir")
    if not isinstance(folder, str):
        return False
    folder = os.path.join(output_dir, folder)
    try:
        with open(os.path.join(folder, "report.json"), encoding="utf-8") as handle:
            report = json.load(handle)
    except (OSError, ValueError):
        return False
    if not isinstance(report, dict) or report.get("status") != "completed":
        return False
    if report.get("adapter_path") is not None:
        adapter = os.path.join(folder, "adapter")
        return all(os.path.isfile(os.path.join(adapter, name)) for name in (CONFIG_NAME, WEIGHTS_NAME))
    return True


def slug(name):
    return name.replace("@", "-").replace("%", "pct").replace("=", "")
