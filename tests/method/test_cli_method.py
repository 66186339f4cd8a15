"""`act-lora select` / `profile` failures on the command line."""
import pytest

from act_lora_fast.cli.main import main as cli_main
from act_lora_fast.method.scores import LayerScores


def test_select_refuses_a_model_with_another_number_of_blocks(capsys, tmp_path):
    """Issue 10.9: the saving printed must be the scored model's, not another model's."""
    from transformers import BertConfig, BertModel

    folder = tmp_path / "bert4"
    BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=4, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(folder)
    LayerScores([3.0, 1.0, 2.0], block_path="encoder.layer").to_json(tmp_path / "scores.json")
    code = cli_main(["select", str(tmp_path / "scores.json"), "--k", "1", "--model", str(folder)])
    err = capsys.readouterr().err
    assert code == 2 and "has 4 blocks" in err and "scores 3" in err and "Traceback" not in err
    LayerScores([3.0, 1.0, 2.0, 0.5], block_path="encoder.layer").to_json(tmp_path / "scores.json")
    assert cli_main(["select", str(tmp_path / "scores.json"), "--k", "1", "--model", str(folder)]) == 0
    assert "saving" in capsys.readouterr().out


@pytest.mark.parametrize("command", [["profile", "{unloadable}", "--out"],
                                     ["profile", "{unloadable}", "--plot"],
                                     ["stability", "--model", "{unloadable}", "--out"]])
def test_outputs_under_a_file_fail_before_any_work(capsys, tmp_path, command, unloadable_model):
    """Issue 10.13: an output place that cannot be written is found first (not the model, not after)."""
    (tmp_path / "f").write_text("x")
    target = tmp_path / "f" / ("out" if command[0] == "stability" else "s.json")
    code = cli_main([*[part.replace("{unloadable}", unloadable_model) for part in command], str(target)])
    err = capsys.readouterr().err
    assert code == 2 and str(tmp_path / "f") in err and "is a file" in err and "Traceback" not in err


@pytest.mark.parametrize("argv, words", [
    (["--task", "sst2"], "task 'sst2' needs a GLUE data_dir"),
    (["--text-file", "{tmp}"], "is a directory"),
], ids=["task-without-data", "text-file-is-a-folder"])
def test_profile_calibration_mistakes_are_named(capsys, tmp_path, argv, words):
    """A --task with nothing to read it from is not silently replaced by the built-in sentences."""
    code = cli_main(["profile", "minilm", *[a.replace("{tmp}", str(tmp_path)) for a in argv]])
    err = capsys.readouterr().err
    assert code == 2 and words in err and len(err.splitlines()) == 1, err
