"""LayerScores (act_lora_fast.method.scores): bad fields, bad files and bad arguments give a clear exception."""
import json
import math

import pytest

import act_lora_fast as A
from act_lora_fast.method.scores import LayerScores


@pytest.mark.parametrize("fields, error, match", [
    ({"module_scores": [1, 2]}, TypeError, "module_scores must be a dict, got list"),
    ({"module_scores": {"a": "x"}}, TypeError, r"module_scores\['a'\] must be a number"),
    ({"module_shapes": {"a": 5}}, ValueError, r"module_shapes\['a'\] must be \[out_features, in_features\]"),
    ({"module_shapes": {"a": [1, 2, 3]}}, ValueError, r"module_shapes\['a'\]"),
    ({"meta": [1]}, TypeError, "meta must be a dict"),
    ({"metric": 5}, TypeError, "metric must be a str"),
    ({"num_tokens": "x"}, TypeError, "num_tokens must be an int >= 0"),
])
def test_layer_scores_fields(fields, error, match):
    with pytest.raises(error, match=match):
        A.LayerScores([1.0, 2.0], **fields)


def test_layer_scores_files(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a directory; expected a scores JSON file"):
        A.LayerScores.from_json(tmp_path)
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ValueError, match=r"bin\.json: not UTF-8 text"):
        A.LayerScores.from_json(tmp_path / "bin.json")
    bad = tmp_path / "shapes.json"
    bad.write_text(json.dumps({"scores": [1.0], "module_shapes": {"a": 3}}))
    with pytest.raises(ValueError, match=r"shapes\.json: module_shapes\['a'\]"):
        A.LayerScores.from_json(bad)
    with pytest.raises(IsADirectoryError, match="is a directory; expected a file path"):
        A.LayerScores([1.0]).to_json(tmp_path)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"layers": [99]}, ValueError, "block index 99 does not exist"),
    ({"layers": ["a"]}, TypeError, "layers must hold ints"),
    ({"layers": [0], "r": "8"}, TypeError, "r must be an int >= 1"),
    ({"layers": [0], "r": 0}, ValueError, "r must be an int >= 1"),
])
def test_lora_parameters_checks_layers_and_rank(kwargs, error, match):
    scores = A.LayerScores([1.0, 2.0], block_path="e", module_shapes={"e.0.q": [4, 4], "e.1.q": [4, 4]})
    with pytest.raises(error, match=match):
        scores.lora_parameters(**kwargs)


@pytest.mark.parametrize("bad", [float("nan"), math.inf, -math.inf])
def test_layer_scores_refuse_undefined_scores(bad, tmp_path):
    """Issue 10.17: a NaN score would be written as non-standard JSON ``NaN`` and rank arbitrarily."""
    with pytest.raises(ValueError, match=r"scores\[1\] is"):
        LayerScores([1.0, bad, 2.0])
    scores = LayerScores([1.0, 3.0, 2.0])
    scores.to_json(tmp_path / "s.json")
    assert "NaN" not in (tmp_path / "s.json").read_text()
    assert LayerScores.from_json(tmp_path / "s.json").scores == [1.0, 3.0, 2.0]
