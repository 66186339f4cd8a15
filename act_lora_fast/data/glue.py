"""GLUE tasks: loading (GLUE's own TSV files or the `nyu-mll/glue` hub dataset), tokenisation, metrics.

TSV layouts (as GLUE's download script writes them; read with quoting off, as GLUE's own readers do):

=====  ===========================================================  ==============================
task   columns used                                                 quirks
=====  ===========================================================  ==============================
CoLA   no header: source, label, original_label, sentence           header-less
SST-2  sentence, label
MRPC   Quality, #1 ID, #2 ID, #1 String, #2 String                  UTF-8 byte-order mark
QQP    id, qid1, qid2, question1, question2, is_duplicate
STS-B  index, genre, ..., sentence1, sentence2, score               regression (0-5)
MNLI   ..., sentence1, sentence2, ..., gold_label                   dev_matched / dev_mismatched
QNLI   index, question, sentence, label                             string labels
RTE    index, sentence1, sentence2, label                           string labels
=====  ===========================================================  ==============================

Metrics are fractions (accuracy 0.81); a task's ``score`` is on GLUE's 0-100 scale and averages the task's
metrics the way the GLUE leaderboard does (MRPC/QQP: F1 and accuracy; STS-B: Pearson and Spearman; MNLI:
matched and mismatched accuracy).
"""
import dataclasses
import math
import os
import random
import socket
from typing import NamedTuple, Optional, Union

import numpy as np
import torch

HUB_DATASET = "nyu-mll/glue"


@dataclasses.dataclass(frozen=True)
class GlueTask:
    name: str                      # canonical lower-case name: "sst2"
    folder: str                    # GLUE's folder name: "SST-2"
    hub_config: str
    text_columns: tuple            # TSV header names (or indices for header-less files) of text_a[, text_b]
    label_column: Union[str, int]
    hub_text_columns: tuple
    label_names: Optional[tuple] = None   # string labels in TSV order of ids; None: integer labels in the file
    num_labels: int = 2
    metrics: tuple = ("accuracy",)
    has_header: bool = True
    eval_splits: tuple = (("dev", "dev.tsv", "validation"),)  # (name, TSV file, hub split)

    @property
    def is_regression(self):
        return self.num_labels == 1

    @property
    def is_pair(self):
        return len(self.text_columns) == 2


GLUE_TASKS = {
    "cola": GlueTask("cola", "CoLA", "cola", (3,), 1, ("sentence",), metrics=("matthews_correlation",),
                     has_header=False),
    "sst2": GlueTask("sst2", "SST-2", "sst2", ("sentence",), "label", ("sentence",)),
    "mrpc": GlueTask("mrpc", "MRPC", "mrpc", ("#1 String", "#2 String"), "Quality", ("sentence1", "sentence2"),
                     metrics=("f1", "accuracy")),
    "qqp": GlueTask("qqp", "QQP", "qqp", ("question1", "question2"), "is_duplicate", ("question1", "question2"),
                    metrics=("f1", "accuracy")),
    "stsb": GlueTask("stsb", "STS-B", "stsb", ("sentence1", "sentence2"), "score", ("sentence1", "sentence2"),
                     num_labels=1, metrics=("pearson", "spearmanr")),
    "mnli": GlueTask("mnli", "MNLI", "mnli", ("sentence1", "sentence2"), "gold_label", ("premise", "hypothesis"),
                     label_names=("entailment", "neutral", "contradiction"), num_labels=3,
                     eval_splits=(("matched", "dev_matched.tsv", "validation_matched"),
                                  ("mismatched", "dev_mismatched.tsv", "validation_mismatched"))),
    "qnli": GlueTask("qnli", "QNLI", "qnli", ("question", "sentence"), "label", ("question", "sentence"),
                     label_names=("entailment", "not_entailment")),
    "rte": GlueTask("rte", "RTE", "rte", ("sentence1", "sentence2"), "label", ("sentence1", "sentence2"),
                    label_names=("entailment", "not_entailment")),
}


def get_task(task):
    """A `GlueTask` by name, forgiving case and dashes ("SST-2", "sts_b", "mnli")."""
    if isinstance(task, GlueTask):
        return task
    if not isinstance(task, str):
        raise TypeError(f"task must be a task name (str), got {type(task).__name__}")
    key = task.lower().replace("-", "").replace("_", "")
    if key not in GLUE_TASKS:
        raise ValueError(f"unknown GLUE task {task!r}; choose one of {', '.join(GLUE_TASKS)}")
    return GLUE_TASKS[key]


class Example(NamedTuple):
    text_a: str
    text_b: Optional[str]
    label: Union[int, float]


@dataclasses.dataclass
class GlueData:
    """A task's examples: ``train`` and one or more named evaluation splits; ``source`` says where from."""
    task: GlueTask
    train: list
    eval: dict
    source: str


# ---------------------------------------------------------------------------------------------- TSV reading
class GlueFormatError(ValueError):
    """A malformed GLUE file; the message names the file and line."""


STSB_RANGE = (0.0, 5.0)  # STS-B's similarity scores; the only regression task


def check_texts(examples, where="examples"):
    """Refuse examples with an empty (or blank) text: a model trained on them learns from nothing."""
    for index, example in enumerate(examples):
        for field in ("text_a", "text_b"):
            text = getattr(example, field, None)
            if field == "text_b" and text is None:
                continue
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"{where}: example {index} has an empty {field} ({text!r})")
    return examples


def _parse_label(task, raw, path, line_no):
    raw = raw.strip()
    where = f"{path}, line {line_no}"
    if task.is_regression:
        try:
            value = float(raw)
        except ValueError:
            raise GlueFormatError(f"{where}: score {raw!r} is not a number") from None
        if not math.isfinite(value):
            raise GlueFormatError(f"{where}: score {raw!r} is not finite")
        low, high = STSB_RANGE
        if not low <= value <= high:
            raise GlueFormatError(f"{where}: score {raw!r} is outside {task.folder}'s range {low:g}-{high:g}")
        return value
    if task.label_names is not None:
        if raw not in task.label_names:
            raise GlueFormatError(f"{where}: label {raw!r} is not one of {', '.join(task.label_names)}")
        return task.label_names.index(raw)
    if raw not in {str(i) for i in range(task.num_labels)}:
        hint = " (CoLA files have no header row)" if not task.has_header and line_no == 1 else ""
        raise GlueFormatError(f"{where}: label {raw!r} is not an integer in 0..{task.num_labels - 1}{hint}")
    return int(raw)


def read_glue_tsv(path, task):
    """Examples from one GLUE TSV file of `task`, checked row by row; errors name the file and line."""
    task = get_task(task)
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"GLUE {task.folder} file not found: {path}")
    # utf-8-sig drops MRPC's byte-order mark; decoding the bytes ourselves keeps a stray "\r" in a row visible
    with open(path, "rb") as handle:
        raw = handle.read()
    try:
        lines = raw.decode("utf-8-sig").split("\n")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise GlueFormatError(f"{path}, line {line}: not UTF-8 text (byte {raw[err.start]:#04x} at offset "
                              f"{err.start})") from None
    if lines and lines[-1] == "":
        lines.pop()  # the final newline (CoLA's dev file has none)
    rows = [line.rstrip("\r").split("\t") for line in lines]
    start = 0
    if task.has_header:
        if not rows:
            raise GlueFormatError(f"{path}, line 1: empty file, expected a header row")
        header = rows[0]
        missing = [c for c in (*task.text_columns, task.label_column) if c not in header]
        if missing:
            raise GlueFormatError(f"{path}, line 1: header lacks column(s) {', '.join(map(repr, missing))} "
                                  f"for {task.folder}; found {header}")
        text_idx = [header.index(c) for c in task.text_columns]
        label_idx = header.index(task.label_column)
        n_columns, start = len(header), 1
    else:
        text_idx, label_idx = list(task.text_columns), task.label_column
        n_columns = max(*text_idx, label_idx) + 1
    examples = []
    for offset, row in enumerate(rows[start:]):
        line_no = start + offset + 1
        if row == [""]:
            raise GlueFormatError(f"{path}, line {line_no}: empty line")
        if len(row) != n_columns:
            raise GlueFormatError(f"{path}, line {line_no}: expected {n_columns} tab-separated columns, "
                                  f"got {len(row)}")
        texts = [row[i] for i in text_idx]
        for column, text in zip(task.text_columns, texts):
            if not text.strip():
                raise GlueFormatError(f"{path}, line {line_no}: empty text in column {column!r}")
        examples.append(Example(texts[0], texts[1] if len(texts) > 1 else None,
                                _parse_label(task, row[label_idx], path, line_no)))
    if not examples:
        raise GlueFormatError(f"{path}: no examples")
    return examples


def load_glue_tsv(task, data_dir):
    """`GlueData` from ``<data_dir>/<TASK>/train.tsv`` and its dev file(s)."""
    task = get_task(task)
    data_dir = os.fspath(data_dir)
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"GLUE data directory not found: {data_dir}")
    folder = os.path.join(data_dir, task.folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"no {task.folder} folder in {data_dir} (expected {folder}/train.tsv)")
    train = read_glue_tsv(os.path.join(folder, "train.tsv"), task)
    evals = {name: read_glue_tsv(os.path.join(folder, filename), task) for name, filename, _ in task.eval_splits}
    return GlueData(task, train, evals, source=f"tsv:{folder}")


# ---------------------------------------------------------------------------------------------- hub loading
def hub_reachable(timeout=2.0):
    """True when offline mode is off and huggingface.co answers quickly; never raises."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in {"1", "true", "yes", "on"}:
            return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def load_glue_hub(task):
    """`GlueData` from the hub's `nyu-mll/glue` (needs network); labels keep the hub's ids, which match GLUE's."""
    import datasets

    task = get_task(task)
    dataset = datasets.load_dataset(HUB_DATASET, task.hub_config)

    def convert(split):
        columns = [dataset[split][c] for c in task.hub_text_columns]
        labels = dataset[split]["label"]
        second = columns[1] if len(columns) > 1 else [None] * len(labels)
        return [Example(a, b, float(y) if task.is_regression else int(y))
                for a, b, y in zip(columns[0], second, labels)]

    evals = {name: convert(hub_split) for name, _, hub_split in task.eval_splits}
    return GlueData(task, convert("train"), evals, source=f"hub:{HUB_DATASET}/{task.hub_config}")


def load_glue(task, data_dir=None, *, max_train_samples=None, max_eval_samples=None, seed=0):
    """A task's data from `data_dir` (GLUE TSV layout) or, without one, from the hub when reachable.

    ``max_train_samples`` keeps a seeded random subset of the training set (GLUE train files are sorted
    in places, so a prefix would be biased); ``max_eval_samples`` keeps a prefix of each dev split.
    """
    task = get_task(task)
    for name, value in (("max_train_samples", max_train_samples), ("max_eval_samples", max_eval_samples)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive int or None, got {value!r}")
    if data_dir is not None and not isinstance(data_dir, (str, os.PathLike)):
        raise TypeError(f"data_dir must be a folder path (str) or None, got {type(data_dir).__name__}")
    if data_dir is not None:
        data = load_glue_tsv(task, data_dir)
    elif hub_reachable():
        data = load_glue_hub(task)
    else:
        raise FileNotFoundError(f"no GLUE data for {task.name}: pass data_dir (GLUE's TSV layout, "
                                f"<dir>/{task.folder}/train.tsv) or go online for the hub's {HUB_DATASET}")
    if max_train_samples is not None and max_train_samples < len(data.train):
        picked = sorted(random.Random(seed).sample(range(len(data.train)), max_train_samples))
        data.train = [data.train[i] for i in picked]
    if max_eval_samples is not None:
        data.eval = {name: rows[:max_eval_samples] for name, rows in data.eval.items()}
    return data


# ---------------------------------------------------------------------------------------------- tokenisation
class TokenizedDataset(torch.utils.data.Dataset):
    """Token ids per example (unpadded); `collate` pads each batch to its own longest row."""

    def __init__(self, examples, tokenizer, max_seq_len, *, regression=False):
        if isinstance(max_seq_len, bool) or not isinstance(max_seq_len, int) or max_seq_len < 8:
            raise ValueError(f"max_seq_len must be an int >= 8, got {max_seq_len!r}")
        if not examples:
            raise ValueError("no examples to tokenize")
        texts_a = [e.text_a for e in examples]
        texts_b = [e.text_b for e in examples] if examples[0].text_b is not None else None
        encoded = tokenizer(texts_a, texts_b, truncation=True, max_length=max_seq_len)
        self.keys = [k for k in ("input_ids", "token_type_ids", "attention_mask") if k in encoded]
        self.features = [{k: encoded[k][i] for k in self.keys} for i in range(len(examples))]
        self.labels = [e.label for e in examples]
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.label_dtype = torch.float32 if regression else torch.long

    def __len__(self):
        return len(self.features)

    def __getitem__(self, index):
        return self.features[index], self.labels[index]

    def collate(self, batch):
        width = max(len(features["input_ids"]) for features, _ in batch)
        out = {}
        for key in self.keys:
            fill = self.pad_id if key == "input_ids" else 0
            out[key] = torch.tensor([f[key] + [fill] * (width - len(f[key])) for f, _ in batch])
        if "attention_mask" not in out:
            out["attention_mask"] = torch.tensor([[1] * len(f["input_ids"]) + [0] * (width - len(f["input_ids"]))
                                                  for f, _ in batch])
        out["labels"] = torch.tensor([label for _, label in batch], dtype=self.label_dtype)
        return out


# ---------------------------------------------------------------------------------------------- metrics
def _binary_counts(predictions, labels):
    tp = int(np.sum((predictions == 1) & (labels == 1)))
    fp = int(np.sum((predictions == 1) & (labels == 0)))
    fn = int(np.sum((predictions == 0) & (labels == 1)))
    tn = int(np.sum((predictions == 0) & (labels == 0)))
    return tp, fp, fn, tn


def f1_score(predictions, labels):
    """F1 of the positive class (1), as GLUE reports for MRPC and QQP; 0 when there are no positives."""
    tp, fp, fn, _ = _binary_counts(np.asarray(predictions), np.asarray(labels))
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def matthews_correlation(predictions, labels):
    """Binary Matthews correlation; 0 when a row or column of the confusion matrix is empty."""
    tp, fp, fn, tn = _binary_counts(np.asarray(predictions), np.asarray(labels))
    denominator = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return (tp * tn - fp * fn) / denominator if denominator else 0.0


def compute_metrics(task, predictions, labels):
    """The task's metrics from predicted ids (or scores for STS-B) and gold labels, as fractions."""
    from scipy import stats

    task = get_task(task)
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if predictions.shape != labels.shape or predictions.ndim != 1:
        raise ValueError(f"predictions and labels must be 1-D of one length, got shapes {predictions.shape} and "
                         f"{labels.shape}")
    if predictions.size == 0:
        raise ValueError("no predictions to score")
    out = {}
    for metric in task.metrics:
        if metric == "accuracy":
            out[metric] = float(np.mean(predictions == labels))
        elif metric == "f1":
            out[metric] = float(f1_score(predictions, labels))
        elif metric == "matthews_correlation":
            out[metric] = float(matthews_correlation(predictions, labels))
        elif metric in ("pearson", "spearmanr"):
            constant = np.ptp(predictions) == 0 or np.ptp(labels) == 0
            if constant:  # correlation with a constant is undefined; score it as no correlation
                out[metric] = 0.0
            elif metric == "pearson":
                out[metric] = float(stats.pearsonr(predictions, labels)[0])
            else:
                out[metric] = float(stats.spearmanr(predictions, labels)[0])
    return out


def task_score(task, metrics_by_split):
    """GLUE's 0-100 score of one task from ``{split: metrics}``: the mean of its metrics over its splits."""
    task = get_task(task)
    values = [metrics[m] for metrics in metrics_by_split.values() for m in task.metrics]
    return 100.0 * float(np.mean(values))


def glue_average(scores):
    """The GLUE average (0-100) of the tasks run, from ``{task: score}``."""
    if not scores:
        raise ValueError("no task scores to average")
    return float(np.mean(list(scores.values())))
