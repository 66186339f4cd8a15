"""`LayerScores`: what it refuses."""
import math

import pytest

from act_lora_fast.method.scores import LayerScores


@pytest.mark.parametrize("bad", [float("nan"), math.inf, -math.inf])
def test_layer_scores_refuse_undefined_scores(bad, tmp_path):
    """Issue 10.17: a NaN score would be written as non-standard JSON ``NaN`` and rank arbitrarily."""
    with pytest.raises(ValueError, match=r"scores\[1\] is"):
        LayerScores([1.0, bad, 2.0])
    scores = LayerScores([1.0, 3.0, 2.0])
    scores.to_json(tmp_path / "s.json")
    assert "NaN" not in (tmp_path / "s.json").read_text()
    assert LayerScores.from_json(tmp_path / "s.json").scores == [1.0, 3.0, 2.0]
