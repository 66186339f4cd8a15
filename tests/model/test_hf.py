"""Hugging Face helpers (act_lora_fast.model.hf): where a named model lives."""
import pytest

from act_lora_fast.model.hf import resolve_model_path


def test_resolve_model_path_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        resolve_model_path(str(tmp_path / "nope"))
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match=r"model folder not found: .*file\.txt \(it is a file\)"):
        resolve_model_path(str(tmp_path / "file.txt"))
