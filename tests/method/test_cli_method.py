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
