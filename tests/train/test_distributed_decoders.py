"""The decoder path on 2 processes (torchrun, gloo, CPU; one launch for the whole module, see distributed_worker.py)
against one process: DDP and FSDP2 train like one process (same blocks on every rank, losses, evaluation,
saved adapter), one step's LoRA gradients are equal (also resharded or not, in bf16, with PEFT's fused layers),
activation checkpointing keeps LoRA dropout's gradients, a killed run resumes, the README's FSDP command runs.

Tolerances (fp32): losses and adapters within 2e-5 relative (a gloo all-reduce sums in another order than one
process); bf16 weights (FSDP2's mixed precision) within 5e-2 of the fp32 gradients.
"""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from act_lora_fast.model.adapters import WEIGHTS_NAME
from act_lora_fast.train.loop import train
from act_lora_fast.train.tasks import TextTask
from tests.test_readme import at_tiny_scale, readme_fsdp_command
from tests.train.distributed_worker import FusedCalls, lora_model, run_config, summary, whole_batch

pytestmark = [pytest.mark.multiprocess, pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="gloo on Linux")]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKER = os.path.join(ROOT, "tests", "train", "distributed_worker.py")
FP32 = dict(atol=1e-7, rtol=2e-5)


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def launched(tiny_llama, tmp_path_factory):
    """The worker's records (rank 0, rank 1) and output folder, from one torchrun launch."""
    out = tmp_path_factory.mktemp("two-ranks")
    cli_args = at_tiny_scale(readme_fsdp_command()[readme_fsdp_command().index("act_lora_fast.cli") + 1:],
                             tiny_llama, out)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "GLOO_SOCKET_IFNAME": "lo", "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
               "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), WORKER, tiny_llama, str(out),
               json.dumps(cli_args)]
    proc = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-6000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)], out


@pytest.fixture(scope="module")
def single(tiny_llama, tmp_path_factory):
    """The same training in one process: batch 8 = the 2 ranks' 4 + 4."""
    out = tmp_path_factory.mktemp("one-process")
    return summary(train(run_config(tiny_llama, batch_size=8, output_dir=str(out))).report), out


def _assert_tensors_close(actual, expected, **tolerance):
    assert actual.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], **tolerance, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("engine", ["ddp", "fsdp"])
def test_two_ranks_train_like_one_process(launched, single, engine):
    (rank0, rank1), out = launched
    reference, reference_dir = single
    run = rank0[engine]
    # every rank profiled with all-reduced norms and selected the one process's blocks
    assert run["selected_layers"] == rank1[engine]["selected_layers"] == reference["selected_layers"]
    assert run["scores"] == rank1[engine]["scores"]
    assert run["scores"] == pytest.approx(reference["scores"], rel=1e-6)
    assert run["devices"] == 2 and run["optimizer_steps"] == reference["optimizer_steps"] == 4
    # the same global batches, token-weighted: the same losses step by step, the same evaluation
    assert [s["loss"] for s in run["loss_curve"]] == pytest.approx([s["loss"] for s in reference["loss_curve"]],
                                                                    rel=FP32["rtol"])
    assert run["history"][0]["train_loss"] == pytest.approx(reference["history"][0]["train_loss"], rel=FP32["rtol"])
    assert run["history"][0]["metrics"]["loss"] == pytest.approx(reference["history"][0]["metrics"]["loss"],
                                                                 rel=FP32["rtol"])
    assert rank1[engine]["history"] == run["history"]
    # the adapter rank 0 saved (gathered from the shards under FSDP) is the one process's adapter
    _assert_tensors_close(load_file(out / engine / "adapter" / WEIGHTS_NAME),
                          load_file(reference_dir / "adapter" / WEIGHTS_NAME), **FP32)


def test_a_saved_adapter_loads_into_shards_and_gathers_back(launched):
    _, out = launched
    saved = load_file(out / "fsdp" / "adapter" / WEIGHTS_NAME)
    assert load_file(out / "reloaded" / WEIGHTS_NAME).keys() == saved.keys()
    _assert_tensors_close(load_file(out / "reloaded" / WEIGHTS_NAME), saved, atol=0, rtol=0)


def test_compare_trains_its_variants_with_fsdp(launched):
    (rank0, rank1), out = launched
    assert rank0["compare"] == rank1["compare"] == ["all", "activation@50%"]
    compare = json.loads((out / "compare" / "compare.json").read_text())
    assert compare["status"] == "complete" and compare["higher_is_better"] is False
    assert all(run["score"] > 0 for variant in compare["variants"] for run in variant["runs"])
    assert "eval loss ↓" in (out / "compare" / "compare.md").read_text()


def test_fsdp_runs_the_fused_op_on_gathered_weights(launched):
    (rank0, rank1), _ = launched
    for record in (rank0, rank1):
        assert record["fsdp_fused"]["calls"] > 0
        assert record["fsdp_fused"]["weight_types"] in (["Parameter"], ["Parameter", "Tensor"])  # never a DTensor
        assert record["errors"]["direct call"].startswith("TypeError: the fused LoRA op got a DTensor (weight")
        assert record["errors"]["merge"].startswith("RuntimeError: merge() on an FSDP-sharded layer")


@pytest.fixture(scope="module")
def reference_grads(tiny_llama):
    batch, tokens = whole_batch(tiny_llama)

    def grads(**build):
        model = lora_model(tiny_llama, **build)
        (TextTask.loss(model, batch) / tokens).backward()
        return {n: p.grad.float() for n, p in model.named_parameters() if p.grad is not None}

    return {"ours": grads(), "peft": grads(peft=True)}


@pytest.mark.parametrize("name, reference, tolerance", [
    ("ddp", "ours", FP32), ("fsdp", "ours", FP32), ("fsdp-keep", "ours", FP32), ("fsdp-again", "ours", FP32),
    ("fsdp-bf16", "ours", dict(atol=2e-3, rtol=5e-2)), ("peft-fsdp", "peft", FP32),
])
def test_one_step_gradients_equal_one_process(launched, reference_grads, name, reference, tolerance):
    (rank0, _), out = launched
    grads = load_file(out / f"grads-{name}.safetensors")
    assert len(grads) == (2 * 3 if reference == "peft" else 2 * 7) * 2  # A and B of every adapted linear
    _assert_tensors_close(grads, reference_grads[reference], **tolerance)
    assert rank0["fused_calls"][name] > 0  # ours, and PEFT's layers under patch_peft, ran the fused op


@pytest.mark.parametrize("engine", ["ddp", "fsdp"])
@pytest.mark.parametrize("kind", ["non-reentrant", "reentrant"])
def test_checkpointing_keeps_dropout_gradients_across_ranks(launched, engine, kind):
    _, out = launched
    plain = load_file(out / f"grads-{engine}-dropout-None.safetensors")
    dropped_out = load_file(out / f"grads-{engine}.safetensors")
    assert any(not torch.allclose(plain[n], dropped_out[n], atol=1e-5) for n in plain)  # dropout did act
    _assert_tensors_close(load_file(out / f"grads-{engine}-dropout-{kind}.safetensors"), plain, **FP32)


def test_a_killed_fsdp_run_resumes_from_its_adapter(launched):
    peft = pytest.importorskip("peft")
    (rank0, rank1), out = launched
    assert rank0["killed"] == rank1["killed"] == "interrupted"
    killed = json.loads((out / "killed" / "report.json").read_text())
    assert killed["status"] == "interrupted" and killed["optimizer_steps"] == 3 and killed["best_step"] == 2
    assert killed["adapter_path"].endswith("killed/adapter")
    resumed = json.loads((out / "resumed" / "report.json").read_text())
    assert resumed["status"] == "completed" and resumed["selection"] == "resumed"
    assert resumed["selected_layers"] == killed["selected_layers"] == rank1["resumed"]["selected_layers"]
    # it started from the saved adapter: better than the killed run's first evaluation after one more epoch
    assert resumed["history"][0]["score"] < killed["history"][0]["score"]
    from transformers import AutoModelForCausalLM

    model = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(resumed["model"]),
                                           str(out / "resumed" / "adapter"))
    assert sum("lora_A" in n for n, _ in model.named_parameters()) == 7 * len(resumed["selected_layers"])


def test_the_readme_fsdp_command_runs_under_torchrun(launched):
    (rank0, rank1), out = launched
    assert rank0["cli_exit"] == rank1["cli_exit"] == 0
    report = json.loads((out / "llama-fsdp" / "report.json").read_text())
    assert report["config"]["fsdp"] and report["devices"] == 2 and report["task"] == "text"
    assert report["config"]["gradient_checkpointing"] == "non-reentrant"
    assert (out / "llama-fsdp" / "adapter" / WEIGHTS_NAME).is_file()


def test_fused_calls_counter_counts(tiny_llama):
    """The worker's counter is what the checks above rely on: it sees the calls of a plain model's forward."""
    from act_lora_fast import layer as layer_module

    model = lora_model(tiny_llama)
    batch, _ = whole_batch(tiny_llama)
    with FusedCalls(layer_module).watching() as counter:
        TextTask.loss(model, batch)
    assert counter.calls == 2 * 7 and counter.weight_types == {"Parameter"}
