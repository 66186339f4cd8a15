"""TrainConfig (act_lora_fast.train.config): every field is checked when the config is made."""
import pytest

import act_lora_fast as A


@pytest.mark.parametrize("fields, error, match", [
    ({"dropout": "0.1"}, TypeError, "dropout must be a number"),
    ({"warmup_ratio": "x"}, TypeError, "warmup_ratio must be a number"),
    ({"weight_decay": "x"}, TypeError, "weight_decay must be a number"),
    ({"loraplus_lr_ratio": "2"}, TypeError, "loraplus_lr_ratio must be a number or None"),
    ({"max_grad_norm": "1"}, TypeError, "max_grad_norm must be a number or None"),
    ({"fraction": True}, TypeError, r"fraction must be a number or None, got True"),
    ({"backend": "cuda"}, ValueError, "unknown backend 'cuda'"),
    ({"target_modules": []}, TypeError, "target_modules must be"),
    ({"device": "gpu"}, ValueError, "device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'gpu'"),
    ({"progress": "no"}, TypeError, "progress must be a bool"),
    ({"modules_to_save": [3]}, TypeError, "modules_to_save must be None or a list of module names"),
])
def test_train_config_fields(fields, error, match):
    with pytest.raises(error, match=match):
        A.TrainConfig(model="m", **fields)


def test_train_config_takes_one_module_name():
    assert A.TrainConfig(model="m", modules_to_save="classifier").modules_to_save == ["classifier"]
