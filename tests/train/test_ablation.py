"""`ablate`: the subsets, the runs (head only included), resuming, and the refusals."""
import json

import pytest

from act_lora_fast.train.ablation import ablation_subsets, run_ablation
from act_lora_fast.train.config import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def _base(model, data_dir, **overrides):
    values = dict(model=model, data_dir=data_dir, epochs=1, batch_size=16, max_seq_len=24, max_train_samples=32,
                  max_eval_samples=24, calibration_samples=16, progress=False, plots=False, save_adapter=False)
    values.update(overrides)
    return TrainConfig(**values)


def test_subsets_are_head_singles_all_and_every_k_subset():
    subsets = ablation_subsets(6)
    assert subsets[:8] == [[], [0], [1], [2], [3], [4], [5], [0, 1, 2, 3, 4, 5]]
    assert len(subsets) == 8 + 20 and len({tuple(s) for s in subsets}) == 28
    assert ablation_subsets(4, k=1) == [[], [0], [1], [2], [3], [0, 1, 2, 3]]   # singles are the k=1 subsets
    with pytest.raises(ValueError, match="exceeds"):
        ablation_subsets(3, k=4)


@pytest.fixture(scope="module")
def ablation(tiny_model, sst2_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ablation")
    seen = []
    result = run_ablation(_base(tiny_model, sst2_dir), seeds=2, k=2, output_dir=str(out), progress=False,
                          on_run=lambda task, run, done, planned: seen.append((task, run["seed"], done, planned)))
    return result, out, seen


def test_every_subset_trains_for_every_seed(ablation):
    result, out, seen = ablation
    saved = json.loads((out / "sst2" / "ablation.json").read_text())
    assert saved["status"] == "complete" and saved["k"] == 2 and saved["seeds"] == [0, 1]
    subsets = ablation_subsets(4, k=2)
    assert [(r["seed"], r["blocks"]) for r in saved["runs"]] == [(s, b) for s in (0, 1) for b in subsets]
    head = [r for r in saved["runs"] if r["blocks"] == []]
    assert all(r["lora_parameters"] == 0 for r in head)
    assert all(r["lora_parameters"] > 0 for r in saved["runs"] if r["blocks"])
    assert set(saved["profiles"]) == {"activation", "gradient", "update"}
    assert all(len(v) == 4 for kind in saved["profiles"].values() for v in kind.values())
    assert seen[-1][2:] == (len(subsets) * 2, len(subsets) * 2)
    assert result["sst2"]["runs"] == saved["runs"]


def test_resume_keeps_finished_runs_and_refuses_other_settings(ablation, tiny_model, sst2_dir):
    _, out, _ = ablation
    trained = []
    run_ablation(_base(tiny_model, sst2_dir), seeds=2, k=2, output_dir=str(out), progress=False, resume=True,
                 on_run=lambda task, run, done, planned: trained.append(run))
    before = json.loads((out / "sst2" / "ablation.json").read_text())["runs"]
    assert [r["score"] for r in trained] == [r["score"] for r in before]   # nothing retrained: the same records
    with pytest.raises(ValueError, match="epochs"):
        run_ablation(_base(tiny_model, sst2_dir, epochs=2), seeds=2, k=2, output_dir=str(out), progress=False,
                     resume=True)
    with pytest.raises(FileExistsError, match="--resume"):
        run_ablation(_base(tiny_model, sst2_dir), seeds=2, k=2, output_dir=str(out), progress=False)


def test_head_only_trains_only_the_head(tiny_model, sst2_dir):
    from act_lora_fast.train.loop import train

    result = train(_base(tiny_model, sst2_dir, selection="none"))
    report = result.report
    assert report["selected_layers"] == [] and report["lora_parameters"] == 0
    assert report["selection_label"] == "head-only"
    trainable = {n for n, p in result.model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("classifier", "bert.pooler")) for n in trainable)
