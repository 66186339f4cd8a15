"""Causal-LM fine-tuning (`task="text"`) in one process: the CLI run end to end, the best epoch by lower loss,
token-weighted gradient accumulation, held-out evaluation, resuming, activation checkpointing with dropout."""
import copy
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from act_lora_fast.cli.main import main as cli_main
from act_lora_fast.data.text import load_text, token_loss_sum
from act_lora_fast.model.inject import apply_act_lora, lora_modules
from act_lora_fast.train import tasks
from act_lora_fast.train.config import TrainConfig
from act_lora_fast.train.loop import train
from tests.models import EVAL_TEXT, TRAIN_TEXT, tiny_model, token_batch, write_tiny_llama

pytestmark = pytest.mark.usefixtures("one_thread")
QUICK = dict(epochs=1, batch_size=8, max_seq_len=40, max_train_samples=32, max_eval_samples=16, progress=False,
             plots=False)


@pytest.fixture
def llama(tiny_llama):
    return tiny_llama


def _config(llama, **overrides):
    values = dict(model=llama, task="text", train_file=TRAIN_TEXT, eval_file=EVAL_TEXT, **QUICK)
    values.update(overrides)
    return TrainConfig(**values)


def _lora_weights(model):
    return {name: param.detach().clone() for name, param in model.named_parameters() if param.requires_grad}


def test_cli_trains_a_decoder_and_plain_peft_loads_the_adapter(llama, tmp_path, capsys):
    peft = pytest.importorskip("peft")
    out = tmp_path / "run"
    code = cli_main(["train", "--model", llama, "--task", "text", "--train-file", TRAIN_TEXT, "--eval-file",
                     EVAL_TEXT, "--fraction", "0.5", "--epochs", "1", "--max-train-samples", "32",
                     "--max-eval-samples", "16", "--max-seq-len", "40", "--no-progress", "--output-dir", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "text: loss " in printed and "perplexity" in printed and "(eval loss " in printed
    report = json.loads((out / "report.json").read_text())
    assert report["task"] == "text" and report["higher_is_better"] is False and report["score_name"] == "eval loss"
    assert report["score"] == pytest.approx(report["metrics"]["loss"])
    assert report["metrics"]["perplexity"] == pytest.approx(torch.tensor(report["metrics"]["loss"]).exp().item())
    assert len(report["selected_layers"]) == 2 and report["layer_scores"]["metric"] == "input_norm"
    assert report["eval_examples"] == {"eval": 16} and (out / "loss.png").is_file()

    # the adapter in plain PEFT gives the eval loss the report states
    base = AutoModelForCausalLM.from_pretrained(llama)
    plain = peft.PeftModel.from_pretrained(base, str(out / "adapter")).eval()
    tokenizer = AutoTokenizer.from_pretrained(llama)
    data = tasks.TextTask().datasets(load_text(TRAIN_TEXT, EVAL_TEXT, max_eval_samples=16), tokenizer,
                                     _config(llama))[1]["eval"]
    batch = data.collate([data[i] for i in range(len(data))])
    with torch.no_grad():
        total, count = token_loss_sum(plain(input_ids=batch["input_ids"],
                                            attention_mask=batch["attention_mask"]).logits, batch["labels"])
    assert float(total) / count == pytest.approx(report["metrics"]["loss"], rel=1e-5)


def test_the_best_epoch_is_the_lowest_loss(llama, monkeypatch):
    losses = iter([5.0, 4.0, 6.0])
    monkeypatch.setattr(tasks.TextTask, "evaluate", lambda self, model, sets, **kw: (
        lambda loss: {"metrics": {"loss": loss, "perplexity": 1.0}, "by_split": {}, "score": loss})(next(losses)))
    result = train(_config(llama, k=1, epochs=3, save_adapter=False))
    assert result.report["best_epoch"] == 2 and result.report["score"] == 4.0


def test_accumulated_steps_equal_one_big_batch(llama):
    """Token-weighted: 2 micro-batches of 4 give the step one batch of 8 gives (the same examples, the same
    loss tokens), although the micro-batches hold different numbers of loss tokens."""
    big = train(_config(llama, selection="last", k=2, batch_size=8, save_adapter=False))
    accumulated = train(_config(llama, selection="last", k=2, batch_size=4, grad_accum_steps=2,
                                save_adapter=False))
    assert big.report["optimizer_steps"] == accumulated.report["optimizer_steps"] == 4
    a, b = _lora_weights(big.model), _lora_weights(accumulated.model)
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=2e-6, rtol=1e-5)
    assert big.report["history"][0]["train_loss"] == pytest.approx(accumulated.report["history"][0]["train_loss"],
                                                                    rel=1e-6)


def test_held_out_split_and_resume(llama, tmp_path):
    first = train(_config(llama, eval_file=None, eval_fraction=0.25, max_eval_samples=None, k=1,
                          output_dir=str(tmp_path / "a")))
    assert first.report["eval_examples"] == {"eval": 80} and first.report["train_examples"] == 32
    assert "80 rows held out, seed 0" in first.report["data_source"]
    resumed = train(_config(llama, resume_from=str(tmp_path / "a" / "adapter"), output_dir=str(tmp_path / "b")))
    assert resumed.report["selection"] == "resumed"
    assert resumed.report["selected_layers"] == first.report["selected_layers"]
    assert resumed.report["history"][0]["score"] < first.report["history"][0]["score"]  # it went on learning


@pytest.mark.parametrize("overrides, error, match", [
    (dict(train_file=None), ValueError, "task 'text' needs train_file"),
    (dict(train_file="missing.jsonl"), FileNotFoundError, "train_file: file not found: missing.jsonl"),
    (dict(task="sst2"), ValueError, "train_file is for task 'text'"),
    (dict(eval_fraction=0.0, eval_file=None), ValueError, "eval_fraction must be in"),
    (dict(gradient_checkpointing="sometimes"), ValueError, "unknown gradient_checkpointing 'sometimes'"),
    (dict(fsdp=True, precision="fp16"), ValueError, "fsdp with precision fp16 is not supported"),
])
def test_text_config_errors(llama, overrides, error, match):
    with pytest.raises(error, match=match):
        _config(llama, **overrides)


def test_fsdp_without_torchrun_is_refused(llama):
    with pytest.raises(ValueError, match="fsdp shards the model across processes: launch with torchrun"):
        train(_config(llama, fsdp=True))


def test_cli_text_errors_are_one_line(capsys, llama, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"prompt": "no completion"}\n')
    code = cli_main(["train", "--model", llama, "--task", "text", "--train-file", str(bad), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and f"{bad}, line 2: a prompt/completion row lacks" in err


# ---------------------------------------------------------------------------------------------- checkpointing
def _grads(model, batch, *, checkpoint=None, preserve_rng_state=True):
    model = copy.deepcopy(model)
    if checkpoint is not None:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={
            "use_reentrant": checkpoint == "reentrant", "preserve_rng_state": preserve_rng_state})
    model.train()
    torch.manual_seed(11)  # every run draws the same dropout seeds in the same order
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    total, count = token_loss_sum(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                                  labels)
    (total / count).backward()
    return {name: param.grad.clone() for name, param in model.named_parameters() if param.requires_grad}


@pytest.mark.parametrize("kind", ["non-reentrant", "reentrant"])
def test_checkpointed_blocks_redraw_the_same_dropout(kind):
    """With LoRA dropout the recomputed forward must rebuild the forward's masks: gradients equal the
    non-checkpointed run's (and differ when the checkpoint does not restore the RNG, so the test can fail)."""
    model = apply_act_lora(tiny_model("llama", head="lm", layers=3), [0, 2], r=4, dropout=0.3, verbose=False)
    for layer in lora_modules(model).values():
        torch.nn.init.normal_(layer.lora_B.weight, std=0.5)  # B != 0: dropout on the LoRA branch shows in the loss
    batch = token_batch(batch=3, seq=9, seed=4, labels=False)
    plain = _grads(model, batch)
    checkpointed = _grads(model, batch, checkpoint=kind)
    assert plain.keys() == checkpointed.keys() and len(plain) == 2 * 2 * 7
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5)
    unrestored = _grads(model, batch, checkpoint=kind, preserve_rng_state=False)
    assert any(not torch.allclose(unrestored[name], plain[name], atol=1e-4) for name in plain)


def test_training_with_checkpointing_equals_training_without(llama):
    plain = train(_config(llama, selection="first", k=2, dropout=0.2, save_adapter=False))
    checkpointed = train(_config(llama, selection="first", k=2, dropout=0.2, save_adapter=False,
                                 gradient_checkpointing="reentrant"))
    a, b = _lora_weights(plain.model), _lora_weights(checkpointed.model)
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-6, rtol=1e-5)


def test_the_ablation_runs_on_a_decoder(tmp_path):
    """A causal LM has no head: every ablation run trains LoRA (no head-only run); scores are eval losses."""
    from act_lora_fast.train.ablation import run_ablation

    two_blocks = write_tiny_llama(tmp_path / "llama", layers=2)
    result = run_ablation(_config(two_blocks, fraction=None), seeds=1, progress=False)["text"]
    assert [run["blocks"] for run in result["runs"]] == [[0], [1], [0, 1]]
    assert all(run["score"] == run["metrics"]["loss"] > 0 for run in result["runs"])
