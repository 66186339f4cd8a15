"""The timing phase: interleaved rounds, one measurement per distinct selection, medians, clock choice."""
import pytest

from act_lora_fast.measure import harness, timing
from act_lora_fast.measure.timing import TimingSettings, bench_settings, time_selections, timing_batch
from tests.models import tiny_bert, token_batch

pytestmark = pytest.mark.usefixtures("one_thread")


def test_selections_are_measured_interleaved_once_each(monkeypatch):
    order = []
    real_build = harness.build_variant

    def recording_build(base, variant, settings, device=None):
        order.append(variant.layers)
        return real_build(base, variant, settings, device)

    monkeypatch.setattr(harness, "build_variant", recording_build)
    model = tiny_bert(layers=3)
    settings = bench_settings(TimingSettings(rounds=3, steps=1, warmup_steps=1, clock="process"), r=2,
                              modules_to_save=["classifier"])
    result = time_selections(model, [[2], [0, 1, 2], [2], [1, 2]], token_batch(batch=2, seq=8), settings, rounds=3)
    assert list(result) == [(2,), (0, 1, 2), (1, 2)]                    # duplicates measured once
    # round 0 forward, round 1 reversed, round 2 forward: the order alternates
    assert order == [(2,), (0, 1, 2), (1, 2), (1, 2), (0, 1, 2), (2,), (2,), (0, 1, 2), (1, 2)]
    for entry in result.values():
        assert entry["rounds"] == 3 and len(entry["step_ms_rounds"]) == 3 and entry["clock"] == "process"
        assert entry["step_ms"] == sorted(entry["step_ms_rounds"])[1]    # the median
        assert entry["peak_memory_bytes"] > 0
    assert result[(0, 1, 2)]["trainable_parameters"] > result[(2,)]["trainable_parameters"]
    # more adapters save more for backward: the accounted memory grows with the selection
    assert result[(0, 1, 2)]["peak_memory_bytes"] > result[(2,)]["peak_memory_bytes"]


def test_timing_batch_is_a_seeded_training_batch():
    class Dataset:
        def __len__(self):
            return 10

        def __getitem__(self, index):
            return index

        def collate(self, items):
            return {"picked": list(items)}

    a, b = timing_batch(Dataset(), 4, seed=3), timing_batch(Dataset(), 4, seed=3)
    assert a == b and len(a["picked"]) == 4 and len(set(a["picked"])) == 4
    assert len(timing_batch(Dataset(), 50)["picked"]) == 10


@pytest.mark.parametrize("kwargs, error, match", [
    ({"rounds": 0}, ValueError, "rounds must be an int >= 1"),
    ({"steps": 1.5}, TypeError, "steps must be an int"),
    ({"clock": "cpu"}, ValueError, "clock"),
])
def test_settings_are_checked(kwargs, error, match):
    with pytest.raises(error, match=match):
        TimingSettings(**kwargs)


def test_bad_selections_name_the_problem():
    model = tiny_bert(layers=3)
    settings = bench_settings(TimingSettings(rounds=1, steps=1))
    with pytest.raises(ValueError, match="block index 5 does not exist"):
        time_selections(model, [[5]], token_batch(batch=2, seq=8), settings)
    with pytest.raises(ValueError, match="no selections"):
        time_selections(model, [], token_batch(batch=2, seq=8), settings)
    with pytest.raises(TypeError, match="settings must be a BenchSettings"):
        time_selections(model, [[1]], token_batch(batch=2, seq=8), TimingSettings())
    with pytest.raises(TypeError, match="timing must be a TimingSettings"):
        bench_settings({"rounds": 2})
    assert timing.TimingSettings().clock == "process"
