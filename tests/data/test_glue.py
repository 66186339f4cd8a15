"""GLUE data and metrics: every TSV layout, malformed files, metrics against independent formulas."""
import math
import os

import numpy as np
import pytest
from scipy import stats

import act_lora_fast as A
from act_lora_fast.data.glue import (GLUE_TASKS, Example, GlueFormatError, TokenizedDataset, compute_metrics,
                                      f1_score, get_task, glue_average, hub_reachable, load_glue,
                                      matthews_correlation, read_glue_tsv, task_score)

GLUE_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "glue")
HAS_GLUE = os.path.isdir(GLUE_DIR)


def _write(path, lines, *, bom=False, final_newline=True):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    text = "\n".join("\t".join(row) for row in lines) + ("\n" if final_newline else "")
    with open(path, "w", encoding="utf-8-sig" if bom else "utf-8", newline="") as handle:
        handle.write(text)
    return path


# One fixture per GLUE layout: (task, header or None, rows, expected examples).
LAYOUTS = {
    "cola": (None,
             [["gj04", "1", "", "The sailors rode the breeze."], ["clc95", "0", "*", "Rode the the breeze sailors."]],
             [Example("The sailors rode the breeze.", None, 1), Example("Rode the the breeze sailors.", None, 0)]),
    "sst2": (["sentence", "label"], [["a gorgeous , witty film", "1"], ["dull and \"hollow\" ", "0"]],
             [Example("a gorgeous , witty film", None, 1), Example("dull and \"hollow\" ", None, 0)]),
    "mrpc": (["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
             [["1", "702876", "702977", "He said \"yes\".", "He agreed."], ["0", "1", "2", "Up 3%.", "Down."]],
             [Example("He said \"yes\".", "He agreed.", 1), Example("Up 3%.", "Down.", 0)]),
    "qqp": (["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
            [["0", "1", "2", "How do I cook rice?", "How to cook rice?", "1"],
             ["1", "3", "4", "Why is the sky blue?", "What is Python?", "0"]],
            [Example("How do I cook rice?", "How to cook rice?", 1),
             Example("Why is the sky blue?", "What is Python?", 0)]),
    "stsb": (["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2",
              "score"],
             [["0", "main-captions", "MSRvid", "2012test", "0001", "none", "none", "A plane.", "An air plane.",
               "5.000"],
              ["1", "main-news", "headlines", "2015", "0002", "none", "none", "Cats sleep.", "Stocks fell.", "0.25"]],
             [Example("A plane.", "An air plane.", 5.0), Example("Cats sleep.", "Stocks fell.", 0.25)]),
    "qnli": (["index", "question", "sentence", "label"],
             [["0", "Who wrote it?", "It was written by Ann.", "entailment"],
              ["1", "When?", "The sky is blue.", "not_entailment"]],
             [Example("Who wrote it?", "It was written by Ann.", 0), Example("When?", "The sky is blue.", 1)]),
    "rte": (["index", "sentence1", "sentence2", "label"],
            [["0", "Dana died at 44.", "Dana had an accident.", "not_entailment"],
             ["1", "Bacteria mutate.", "Bacteria win.", "entailment"]],
            [Example("Dana died at 44.", "Dana had an accident.", 1), Example("Bacteria mutate.", "Bacteria win.", 0)]),
}

MNLI_TRAIN_HEADER = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
                     "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", "label1", "gold_label"]
MNLI_DEV_HEADER = MNLI_TRAIN_HEADER[:-1] + ["label2", "label3", "label4", "label5", "gold_label"]


def _mnli_row(i, premise, hypothesis, label, dev):
    parses = ["( x )", "( y )", "(ROOT x)", "(ROOT y)"]
    labels = [label] * (5 if dev else 1)
    return [str(i), "31193", f"{i}n", "government", *parses, premise, hypothesis, *labels, label]


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_each_tsv_layout_parses(tmp_path, name):
    task = get_task(name)
    header, rows, expected = LAYOUTS[name]
    lines = ([header] if header else []) + rows
    path = _write(tmp_path / task.folder / "train.tsv", lines, bom=name == "mrpc")
    _write(tmp_path / task.folder / "dev.tsv", lines, bom=name == "mrpc", final_newline=False)
    assert read_glue_tsv(path, name) == expected
    data = load_glue(name, tmp_path)
    assert data.train == expected and data.eval == {"dev": expected}
    assert data.source.startswith("tsv:")


def test_mnli_matched_and_mismatched_dev_files(tmp_path):
    folder = tmp_path / "MNLI"
    _write(folder / "train.tsv", [MNLI_TRAIN_HEADER, _mnli_row(0, "A man eats.", "Someone eats.", "entailment", False),
                                  _mnli_row(1, "It rains.", "It is dry.", "contradiction", False)])
    _write(folder / "dev_matched.tsv", [MNLI_DEV_HEADER, _mnli_row(0, "Cats purr.", "Cats are loud.", "neutral", True)])
    _write(folder / "dev_mismatched.tsv", [MNLI_DEV_HEADER,
                                           _mnli_row(0, "Sun rises.", "Sun sets.", "contradiction", True)])
    data = load_glue("MNLI", tmp_path)
    assert [e.label for e in data.train] == [0, 2]
    assert data.train[0] == Example("A man eats.", "Someone eats.", 0)
    assert data.eval == {"matched": [Example("Cats purr.", "Cats are loud.", 1)],
                         "mismatched": [Example("Sun rises.", "Sun sets.", 2)]}


def test_mrpc_byte_order_mark_does_not_hide_the_header(tmp_path):
    header, rows, expected = LAYOUTS["mrpc"]
    path = _write(tmp_path / "MRPC" / "train.tsv", [header] + rows, bom=True)
    with open(path, "rb") as handle:
        assert handle.read(3) == b"\xef\xbb\xbf"
    assert read_glue_tsv(path, "mrpc") == expected


@pytest.mark.parametrize("lines, message", [
    ([["sentence", "label"], ["good", "1"], ["too", "many", "columns"]], "line 3: expected 2 tab-separated"),
    ([["sentence", "label"], ["good", "7"]], "line 2: label '7'"),
    ([["sentence", "label"], ["good", "1"], [""], ["bad", "0"]], "line 3: empty line"),
    ([["text", "label"], ["good", "1"]], "line 1: header lacks column(s) 'sentence'"),
    ([["sentence", "label"]], "no examples"),
])
def test_malformed_sst2_names_file_and_line(tmp_path, lines, message):
    path = _write(tmp_path / "SST-2" / "train.tsv", lines)
    with pytest.raises(GlueFormatError) as info:
        read_glue_tsv(path, "sst2")
    assert str(path) in str(info.value) and message in str(info.value)


def test_malformed_labels_of_other_layouts(tmp_path):
    header, rows, _ = LAYOUTS["stsb"]
    bad = [header, rows[0], rows[1][:-1] + ["high"]]
    path = _write(tmp_path / "STS-B" / "dev.tsv", bad)
    with pytest.raises(GlueFormatError, match=r"line 3: score 'high' is not a number"):
        read_glue_tsv(path, "stsb")
    header, rows, _ = LAYOUTS["rte"]
    path = _write(tmp_path / "RTE" / "dev.tsv", [header, rows[0][:-1] + ["maybe"]])
    with pytest.raises(GlueFormatError, match=r"line 2: label 'maybe' is not one of entailment, not_entailment"):
        read_glue_tsv(path, "rte")
    # CoLA has no header; a file that has one fails on line 1 with a hint.
    path = _write(tmp_path / "CoLA" / "train.tsv", [["source", "label", "orig", "sentence"], ["gj04", "1", "", "Hi."]])
    with pytest.raises(GlueFormatError, match=r"line 1: label 'label'.*no header"):
        read_glue_tsv(path, "cola")


def test_missing_files_and_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        read_glue_tsv(tmp_path / "SST-2" / "train.tsv", "sst2")
    with pytest.raises(FileNotFoundError, match="GLUE data directory not found"):
        load_glue("sst2", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no RTE folder"):
        load_glue("rte", tmp_path)
    header, rows, _ = LAYOUTS["rte"]
    _write(tmp_path / "RTE" / "train.tsv", [header] + rows)
    with pytest.raises(FileNotFoundError, match=r"dev\.tsv"):
        load_glue("rte", tmp_path)


def test_task_names_and_bad_arguments(tmp_path):
    assert get_task("SST-2") is GLUE_TASKS["sst2"] and get_task("sts_b").is_regression
    assert get_task("mnli").num_labels == 3 and get_task("qqp").metrics == ("f1", "accuracy")
    with pytest.raises(ValueError, match="unknown GLUE task 'wnli2'"):
        get_task("wnli2")
    with pytest.raises(TypeError, match="task must be"):
        get_task(3)
    with pytest.raises(ValueError, match="max_train_samples"):
        load_glue("sst2", tmp_path, max_train_samples=0)


def test_offline_means_no_hub(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_reachable() is False
    with pytest.raises(FileNotFoundError, match="pass data_dir"):
        load_glue("sst2")


def test_max_train_samples_is_a_seeded_subset(tmp_path):
    rng = np.random.default_rng(3)
    rows = [[f"sentence number {i} {rng.integers(1e6)}", str(i % 2)] for i in range(57)]
    _write(tmp_path / "SST-2" / "train.tsv", [["sentence", "label"]] + rows)
    _write(tmp_path / "SST-2" / "dev.tsv", [["sentence", "label"]] + rows[:11])
    full = load_glue("sst2", tmp_path).train
    a = load_glue("sst2", tmp_path, max_train_samples=13, max_eval_samples=5, seed=1)
    b = load_glue("sst2", tmp_path, max_train_samples=13, seed=1)
    c = load_glue("sst2", tmp_path, max_train_samples=13, seed=2)
    assert len(a.train) == 13 and a.train == b.train and a.train != c.train
    assert a.train != full[:13] and all(e in full for e in a.train)
    assert len(a.eval["dev"]) == 5 and len(b.eval["dev"]) == 11


# ---------------------------------------------------------------------------------------------- metrics
def test_binary_metrics_match_independent_formulas():
    rng = np.random.default_rng(11)
    labels = rng.integers(0, 2, 157)
    predictions = np.where(rng.random(157) < 0.7, labels, 1 - labels)
    tp = np.sum((predictions == 1) & (labels == 1))
    precision, recall = tp / np.sum(predictions == 1), tp / np.sum(labels == 1)
    assert f1_score(predictions, labels) == pytest.approx(2 * precision * recall / (precision + recall))
    # For binary labels the Matthews correlation is the Pearson correlation of the 0/1 vectors.
    assert matthews_correlation(predictions, labels) == pytest.approx(np.corrcoef(predictions, labels)[0, 1])
    assert matthews_correlation(np.ones(9), rng.integers(0, 2, 9)) == 0.0  # degenerate: defined as 0
    metrics = compute_metrics("mrpc", predictions, labels)
    assert metrics["accuracy"] == pytest.approx(np.mean(predictions == labels))
    assert set(compute_metrics("cola", predictions, labels)) == {"matthews_correlation"}


def test_regression_and_multiclass_metrics():
    rng = np.random.default_rng(5)
    gold = rng.uniform(0, 5, 91)
    predicted = gold + rng.normal(0, 1.3, 91)
    metrics = compute_metrics("stsb", predicted, gold)
    assert metrics["pearson"] == pytest.approx(stats.pearsonr(predicted, gold)[0])
    assert metrics["spearmanr"] == pytest.approx(stats.spearmanr(predicted, gold)[0])
    assert compute_metrics("stsb", np.full(91, 2.5), gold) == {"pearson": 0.0, "spearmanr": 0.0}
    labels = rng.integers(0, 3, 73)
    guesses = rng.integers(0, 3, 73)
    assert compute_metrics("mnli", guesses, labels) == {"accuracy": pytest.approx(np.mean(guesses == labels))}
    with pytest.raises(ValueError, match="one length"):
        compute_metrics("sst2", [0, 1], [0, 1, 1])
    with pytest.raises(ValueError, match="no predictions"):
        compute_metrics("sst2", [], [])


def test_task_score_and_glue_average():
    assert task_score("mrpc", {"dev": {"f1": 0.9, "accuracy": 0.8}}) == pytest.approx(85.0)
    assert task_score("mnli", {"matched": {"accuracy": 0.8}, "mismatched": {"accuracy": 0.7}}) == pytest.approx(75.0)
    assert task_score("cola", {"dev": {"matthews_correlation": -0.1}}) == pytest.approx(-10.0)
    assert glue_average({"rte": 60.0, "mrpc": 85.0, "cola": 40.0}) == pytest.approx(61.6666667)
    with pytest.raises(ValueError):
        glue_average({})


# ---------------------------------------------------------------------------------------------- tokenisation
class _CharTokenizer:
    """A stand-in tokenizer: one id per character, [CLS]=1 ... [SEP]=2, pairs joined by [SEP]."""
    pad_token_id = 0

    def __call__(self, texts_a, texts_b=None, truncation=True, max_length=None):
        ids = []
        for i, a in enumerate(texts_a):
            row = [1] + [3 + ord(c) % 50 for c in a] + [2]
            if texts_b is not None:
                row += [3 + ord(c) % 50 for c in texts_b[i]] + [2]
            ids.append(row[:max_length])
        return {"input_ids": ids, "attention_mask": [[1] * len(r) for r in ids]}


def test_tokenized_dataset_pads_each_batch_to_its_longest_row():
    examples = [Example("abc", None, 1), Example("a much longer sentence here", None, 0), Example("xy", None, 1)]
    dataset = TokenizedDataset(examples, _CharTokenizer(), max_seq_len=16)
    batch = dataset.collate([dataset[0], dataset[2]])
    assert batch["input_ids"].shape == (2, 5) and batch["attention_mask"].sum().item() == 5 + 4
    assert batch["input_ids"][1, -1].item() == 0 and batch["labels"].tolist() == [1, 1]
    long = dataset.collate([dataset[1]])
    assert long["input_ids"].shape == (1, 16)  # truncated to max_seq_len
    regression = TokenizedDataset([Example("a", "b", 2.5)], _CharTokenizer(), 8, regression=True)
    assert regression.collate([regression[0]])["labels"].dtype.is_floating_point
    with pytest.raises(ValueError, match="max_seq_len"):
        TokenizedDataset(examples, _CharTokenizer(), 4)


@pytest.mark.skipif(not HAS_GLUE, reason="GLUE data folder ../shared/data/glue is absent")
def test_real_glue_files_have_the_official_sizes():
    expected = {"cola": (8551, 1043), "sst2": (67349, 872), "mrpc": (3668, 408), "stsb": (5749, 1500),
                "rte": (2490, 277)}
    for name, (n_train, n_dev) in expected.items():
        data = load_glue(name, GLUE_DIR)
        assert (len(data.train), len(data.eval["dev"])) == (n_train, n_dev), name
    mrpc = load_glue("mrpc", GLUE_DIR)
    assert sum(e.label for e in mrpc.train) == 2474  # GLUE's published label balance
    assert all(isinstance(e.text_b, str) and e.text_b for e in mrpc.eval["dev"])
    assert math.isclose(load_glue("stsb", GLUE_DIR).train[0].label, 5.0)


def test_load_glue_data_dir_type():
    with pytest.raises(TypeError, match="data_dir must be a folder path"):
        A.load_glue("sst2", 5)


# ---------------------------------------------------------------------------------------------- issue 10
@pytest.mark.parametrize("score", ["5.5", "-0.1", "7"])
def test_stsb_scores_outside_0_to_5_are_refused_with_file_and_line(tmp_path, score):
    """Issue 10.17: a similarity score outside STS-B's 0-5 is a broken file, not a training target."""
    header, rows, _ = LAYOUTS["stsb"]
    path = _write(tmp_path / "STS-B" / "train.tsv", [header, rows[0], rows[1][:-1] + [score]])
    with pytest.raises(GlueFormatError, match=rf"{path}, line 3: score '{score}' is outside STS-B's range 0-5"):
        read_glue_tsv(path, "stsb")


@pytest.mark.parametrize("task,row,column", [("sst2", ["   ", "1"], "'sentence'"),
                                             ("rte", ["3", "Dana died.", "", "entailment"], "'sentence2'")])
def test_empty_texts_are_refused_with_file_and_line(tmp_path, task, row, column):
    """Issue 10.17: an empty sentence trains (and scores) on nothing."""
    header, rows, _ = LAYOUTS[task]
    path = _write(tmp_path / "x.tsv", [header, rows[0], row])
    with pytest.raises(GlueFormatError, match=rf"{path}, line 3: empty text in column {column}"):
        read_glue_tsv(path, task)


def test_undecodable_tsv_names_the_file_and_line(tmp_path):
    """Issue 10.15: the decode error names the file and the line of the bad byte."""
    path = tmp_path / "SST-2" / "train.tsv"
    path.parent.mkdir()
    path.write_bytes(b"sentence\tlabel\ngood\t1\nbad \xff byte\t0\n")
    with pytest.raises(GlueFormatError, match=rf"{path}, line 3: not UTF-8 text \(byte 0xff"):
        read_glue_tsv(path, "sst2")
