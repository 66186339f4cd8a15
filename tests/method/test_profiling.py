"""Activation and gradient profiling: values against independent computations, padding invariance, exact
restore, determinism, LayerScores files and plots, the `profile`/`select` commands, bad input."""
import copy
import json
import math
import os

import pytest
import torch
from torch import nn
from tests.models import minilm_path, tiny_bert, tiny_model, token_batch  # noqa: F401

import act_lora_fast as A
from act_lora_fast import LayerScores, apply_act_lora, profile_activations, profile_gradients
from act_lora_fast.model.anatomy import target_linears
from act_lora_fast.cli import main
from act_lora_fast.model.inject import lora_modules
from act_lora_fast.layer import FastActLoRALinear

pytestmark = pytest.mark.usefixtures("one_thread")


def _split_unpadded(batch):
    """The same texts one per batch, without any padding."""
    out = []
    for i, n in enumerate(batch["attention_mask"].sum(1).tolist()):
        out.append({key: batch[key][i:i + 1, :n] for key in ("input_ids", "attention_mask")})
    return out


def _hook_input_norms(model, batches, names):
    """Reference: mean per-token L2 input norm of each module over real tokens, with plain forward hooks."""
    sums = {name: [0.0, 0] for name in names}
    current = {}

    def make(name):
        def hook(module, args):
            norms = args[0].detach().double().norm(dim=-1)
            keep = current["mask"].bool()
            if norms.shape != keep.shape:  # not one row per token (DeBERTa's position embeddings)
                return
            sums[name][0] += norms[keep].sum().item()
            sums[name][1] += int(keep.sum())
        return hook

    hooks = [model.get_submodule(n).register_forward_pre_hook(make(n)) for n in names]
    with torch.no_grad():
        for batch in batches:
            current["mask"] = batch["attention_mask"]
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    for h in hooks:
        h.remove()
    return {name: s / c for name, (s, c) in sums.items()}


@pytest.fixture(scope="module")
def minilm():
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = minilm_path()
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2).eval()
    return model, AutoTokenizer.from_pretrained(path)


TEXTS = ["The cat sat on the mat.", "Stocks fell sharply on Tuesday after the announcement of new tariffs.",
         "Why?", "A remarkably dull film, saved only by its final ten minutes and a great score.",
         "Water boils at one hundred degrees."]


def test_minilm_scores_match_plain_hooks_and_ignore_padding(minilm):
    model, tokenizer = minilm
    padded = [dict(tokenizer(TEXTS, padding=True, return_tensors="pt"))]
    one_by_one = [dict(tokenizer([t], return_tensors="pt")) for t in TEXTS]
    scores = profile_activations(model, padded, progress=False)
    assert len(scores) == 6 and len(scores.module_scores) == 36 and scores.block_path == "bert.encoder.layer"
    assert scores.num_tokens == int(padded[0]["attention_mask"].sum()) and scores.num_batches == 1
    reference = _hook_input_norms(model, one_by_one, list(scores.module_scores))
    for name, value in scores.module_scores.items():
        assert value == pytest.approx(reference[name], rel=1e-5), name
    blocks = target_linears(model)
    for i, value in enumerate(scores.scores):
        assert value == pytest.approx(sum(reference[n] for n in blocks[i]) / 6, rel=1e-5)
    unpadded = profile_activations(model, one_by_one, progress=False)
    assert unpadded.scores == pytest.approx(scores.scores, rel=1e-5)
    assert scores.module_shapes["bert.encoder.layer.0.intermediate.dense"] == [1536, 384]


def test_minilm_block_output_and_rms_metrics(minilm):
    model, tokenizer = minilm
    batch = dict(tokenizer(TEXTS, padding=True, return_tensors="pt"))
    block = profile_activations(model, [batch], metric="block_output", progress=False)
    with torch.no_grad():
        hidden = model(**batch, output_hidden_states=True).hidden_states
    keep = batch["attention_mask"].bool()
    expected = [hidden[i + 1].double().norm(dim=-1)[keep].mean().item() for i in range(6)]
    assert block.scores == pytest.approx(expected, rel=1e-5)
    rms = profile_activations(model, [batch], metric="input_rms", progress=False)
    norm = profile_activations(model, [batch], metric="input_norm", progress=False)
    name = "bert.encoder.layer.2.output.dense"  # input width 1536: rms ≤ mean-norm/sqrt(1536)·(1 + spread)
    assert rms.module_scores[name] >= norm.module_scores[name] / math.sqrt(1536) * (1 - 1e-9)
    assert rms.scores != norm.scores


@pytest.mark.parametrize("kind", ["llama", "qwen2", "deberta-v2", "gpt2"])
def test_tiny_architectures_padding_invariance_and_hooks(kind):
    model = tiny_model(kind)
    batch = token_batch(batch=4, seq=13, lengths=[13, 9, 4, 11], seed=5)
    scores = profile_activations(model, [batch], progress=False)
    alone = profile_activations(model, _split_unpadded(batch), progress=False)
    assert alone.scores == pytest.approx(scores.scores, rel=1e-5)
    reference = _hook_input_norms(model, [batch], list(scores.module_scores))
    assert scores.module_scores == pytest.approx(reference, rel=1e-5)
    assert all(s > 0 for s in scores.scores)


def test_model_is_exactly_restored(minilm):
    model, tokenizer = minilm
    model = copy.deepcopy(model)
    model.train()
    model.bert.encoder.layer[1].attention.self.query.weight.requires_grad_(False)
    batch = dict(tokenizer(TEXTS, padding=True, return_tensors="pt"))
    modules_before = dict(model.named_modules())
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}
    keys = list(model.state_dict())
    model.eval()
    with torch.no_grad():
        before = model(**batch).logits
    model.train()
    for metric in ("input_norm", "block_output"):
        profile_activations(model, [batch], metric=metric, progress=False)
    profile_gradients(model, [{**batch, "labels": torch.tensor([0, 1, 1, 0, 1])}], seed=3, progress=False)
    assert dict(model.named_modules()).keys() == modules_before.keys()
    assert all(model.get_submodule(n) is m for n, m in modules_before.items() if n)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert list(model.state_dict()) == keys and all(p.grad is None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        after = model(**batch).logits
    assert torch.equal(before, after)


def test_restored_even_when_a_batch_fails():
    model = tiny_model("llama")
    originals = dict(model.named_modules())

    def batches():
        yield token_batch(seed=1)
        raise RuntimeError("data loader broke")

    with pytest.raises(RuntimeError, match="data loader broke"):
        profile_activations(model, batches(), progress=False)
    assert all(model.get_submodule(n) is m for n, m in originals.items() if n)
    assert not any(isinstance(m, FastActLoRALinear) for m in model.modules())


def test_deterministic_and_max_batches():
    model = tiny_model("qwen2")
    batches = [token_batch(seed=s) for s in range(3)]
    first = profile_activations(model, batches, progress=False)
    assert profile_activations(model, batches, progress=False) == first
    two = profile_activations(model, batches, max_batches=2, progress=False)
    assert two.num_batches == 2 and two.scores != first.scores
    assert two == profile_activations(model, batches[:2], progress=False)


def test_profiling_an_injected_model_keeps_its_adapters():
    model = tiny_model("llama")
    batch = token_batch(seed=2)
    plain = profile_activations(model, [batch], progress=False)
    apply_act_lora(model, [1], verbose=False)
    adapters = lora_modules(model)
    layer = next(iter(adapters.values()))
    layer.track_norms = False
    again = profile_activations(model, [batch], progress=False)  # B = 0 at init: same activations
    assert again.scores == pytest.approx(plain.scores, rel=1e-6)
    assert lora_modules(model).keys() == adapters.keys() and layer.track_norms is False
    assert layer.norm_stats()["count"] == 0


def test_gradient_profile_matches_backward_formula():
    model = tiny_model("llama", layers=2)
    batches = [token_batch(seed=s) for s in (7, 8)]
    scores = profile_gradients(model, batches, seed=11, progress=False)
    assert scores.metric == "gradient_norm" and scores.meta["seed"] == 11

    reference = copy.deepcopy(model)  # the docstring's head: N(0, initializer_range²) from seed, zero bias
    generator = torch.Generator().manual_seed(11)
    with torch.no_grad():
        reference.score.weight.copy_(torch.randn(reference.score.weight.shape, generator=generator)
                                     * model.config.initializer_range)
    targets = target_linears(reference)
    block_sums = [0.0, 0.0]
    module_sums = {}
    for batch in batches:
        reference.zero_grad()
        reference(**batch).loss.backward()
        for i in range(2):
            squares = [targets[i][n].weight.grad.double().norm() ** 2 for n in targets[i]]
            block_sums[i] += math.sqrt(sum(squares))
            for n, sq in zip(targets[i], squares):
                module_sums[n] = module_sums.get(n, 0.0) + math.sqrt(sq)
    assert scores.scores == pytest.approx([s / 2 for s in block_sums], rel=1e-5)
    assert scores.module_scores == pytest.approx({n: s / 2 for n, s in module_sums.items()}, rel=1e-5)
    other = profile_gradients(model, batches, seed=12, progress=False)
    assert other.scores != scores.scores
    assert profile_gradients(model, batches, seed=11, progress=False).scores == scores.scores


def test_gradient_profile_needs_labels_and_a_loss():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="needs labels"):
        profile_gradients(model, [token_batch(labels=False)], progress=False)
    with pytest.raises(ValueError, match="takes no labels"):
        profile_gradients(tiny_model("llama", head=None), [token_batch()], progress=False)


def test_bad_input_is_named():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="unknown metric 'norm'"):
        profile_activations(model, [token_batch()], metric="norm")
    with pytest.raises(ValueError, match="max_batches"):
        profile_activations(model, [token_batch()], max_batches=0)
    with pytest.raises(TypeError, match="wrap a single batch in a list"):
        profile_activations(model, token_batch())
    with pytest.raises(TypeError, match="dict of tensors"):
        profile_activations(model, [torch.ones(2, 3)], progress=False)
    with pytest.raises(ValueError, match="none of LlamaForSequenceClassification.forward's inputs"):
        profile_activations(model, [{"text": torch.ones(2)}], progress=False)
    bad_mask = {"input_ids": torch.randint(1, 97, (2, 5)), "attention_mask": torch.ones(2, 6, dtype=torch.long)}
    with pytest.raises(ValueError, match=r"attention_mask has shape \(2, 6\) but the tokens are \(2, 5\)"):
        profile_activations(model, [bad_mask], progress=False)
    with pytest.raises(ValueError, match="batches was empty"):
        profile_activations(model, [], progress=False)
    with pytest.raises(ValueError, match="hold no module matching"):
        profile_activations(model, [token_batch()], target_modules=r"model\.layers\.0\..*q_proj", progress=False)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        profile_activations([nn.Linear(2, 2)], [token_batch()])


def test_layer_scores_ranking_json_and_plot(tmp_path):
    scores = LayerScores([0.5, 2.0, 0.5, 3.25], module_scores={"m.0.a": 0.5}, metric="input_norm",
                         block_path="m", module_shapes={"m.0.a": [7, 5], "m.3.a": [7, 5], "x.b": [3, 3]})
    assert scores.ranking() == [3, 1, 0, 2]
    assert scores.lora_parameters([3], r=2) == 24 and scores.lora_parameters(None, r=1) == 24
    path = tmp_path / "sub" / "scores.json"
    text = scores.to_json(path)
    assert LayerScores.from_json(path) == scores == LayerScores.from_json(text)
    assert json.loads(text)["format"] == "act_lora_fast.LayerScores"
    assert os.listdir(path.parent) == ["scores.json"]  # the temp file was renamed, not left over
    png = tmp_path / "scores.png"
    scores.plot(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    with pytest.raises(FileNotFoundError, match="missing.json"):
        LayerScores.from_json(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"scores": [1.0,\n oops]}')
    with pytest.raises(ValueError, match="bad.json: invalid JSON at line 2"):
        LayerScores.from_json(tmp_path / "bad.json")
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['colour'\]"):
        LayerScores.from_json('{"scores": [1.0], "colour": 1}')
    with pytest.raises(TypeError, match="scores must hold numbers"):
        LayerScores(["high", "low"])


def test_profile_and_select_commands(tmp_path, capsys):
    minilm_path()
    text_file = tmp_path / "calib.txt"
    text_file.write_text("\n".join(TEXTS * 2) + "\n\n")
    out, png = tmp_path / "s.json", tmp_path / "s.png"
    assert main(["profile", "minilm", "--text-file", str(text_file), "--samples", "7", "--batch-size", "3",
                 "--out", str(out), "--plot", str(png), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "6 blocks at encoder.layer" in printed and printed.count("%") >= 12
    scores = LayerScores.from_json(out)
    assert scores.meta["samples"] == 7 and png.stat().st_size > 0
    assert main(["select", str(out), "--k", "2"]) == 0
    printed = capsys.readouterr().out
    assert f"layers: {sorted(scores.ranking()[:2])}" in printed
    assert "110,592 vs 331,776 on all blocks (33.3%; saving 66.7%)" in printed  # r=8: 8·(in+out) summed
    assert main(["select", str(out)]) == 2
    assert "exactly one of k, fraction or cumulative" in capsys.readouterr().err
    assert main(["profile", "minilm", "--text-file", str(tmp_path / "nope.txt")]) == 2
    assert "text file not found" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- bad input
IDS = torch.randint(0, 97, (2, 5), generator=torch.Generator().manual_seed(0))
BATCH = {"input_ids": IDS, "attention_mask": torch.ones_like(IDS), "labels": torch.tensor([0, 1])}


@pytest.mark.parametrize("batch, error, match", [
    ({"input_ids": IDS[0]}, ValueError, r"input_ids has shape \(5,\)"),
    ({"input_ids": IDS[:, :0]}, ValueError, r"input_ids has shape \(2, 0\); expected a non-empty"),
    ({"input_ids": IDS.tolist()}, TypeError, "input_ids must be a tensor"),
    ({"input_ids": IDS.float()}, TypeError, "integer token ids, got dtype torch.float32"),
    ({"input_ids": IDS + 97}, ValueError, "outside the model's vocabulary of 97"),
    ({"input_ids": IDS, "attention_mask": torch.ones(5)}, ValueError, r"attention_mask has shape \(5,\)"),
])
@pytest.mark.parametrize("profile", ["activations", "gradients"])
def test_profilers_check_the_tokens(profile, batch, error, match):
    batch = {**batch, "labels": torch.tensor([0, 1])}
    with pytest.raises(error, match=match):
        if profile == "activations":
            A.profile_activations(tiny_bert().eval(), [batch], progress=False)
        else:
            A.profile_gradients(tiny_bert().eval(), [batch], progress=False)


@pytest.mark.parametrize("labels, error, match", [
    (torch.tensor([5, 0]), ValueError, r"holds class 5, but the model has num_labels=2"),
    ("positive", TypeError, r"batch\['labels'\] must be a tensor or a list of numbers"),
])
def test_profile_gradients_checks_labels(labels, error, match):
    with pytest.raises(error, match=match):
        A.profile_gradients(tiny_bert().eval(), [{**BATCH, "labels": labels}], progress=False)
