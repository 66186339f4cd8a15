"""Issue 21.5 and 21.11: saving an adapter never loses one. At every instant the adapter's path holds a complete
old or new adapter (kills included); a save cut short between two steps is recovered by the next save or load;
leftovers of dead saves are cleaned; a full disk or a file-size limit is one OSError with the old adapter
intact."""
import copy
import os
import random
import resource
import signal
import time

import pytest
import torch
from tests.models import tiny_model, token_batch

from act_lora_fast import _io, apply_act_lora, load_adapter, save_adapter

pytestmark = pytest.mark.usefixtures("one_thread")

def _adapter(seed, base=None):
    model = apply_act_lora(copy.deepcopy(base) if base is not None else tiny_model("bert", layers=2), [0, 1], r=4,
                           modules_to_save=["classifier"], verbose=False)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    return model


def _logits(model):
    model.eval()
    with torch.no_grad():
        return model(**{k: v for k, v in token_batch(seed=3).items() if k != "labels"}).logits


@pytest.fixture(scope="module")
def two_adapters():
    base = tiny_model("bert", layers=2)
    old, new = _adapter(1, base), _adapter(2, base)
    return base, old, new


def _loaded_logits(base, path):
    return _logits(load_adapter(copy.deepcopy(base), path))


def _files(folder):
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


def test_a_save_cut_between_its_two_renames_is_put_back(two_adapters, tmp_path, monkeypatch):
    """Where the system has no atomic exchange: a Ctrl-C (or kill) between retiring the old folder and renaming
    the new one in left nothing at the path; the next load (or save) puts the old adapter back."""
    base, old, new = two_adapters
    path = tmp_path / "adapter"
    save_adapter(old, path)
    monkeypatch.setattr(_io, "_exchange", lambda a, b: False, raising=False)
    real_rename, renames = os.rename, []

    def rename_then_interrupt(src, dst):
        renames.append(dst)
        if len(renames) == 2:  # the old folder is retired; the new one is not in place yet
            raise KeyboardInterrupt
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        save_adapter(new, path)
    monkeypatch.setattr(os, "rename", real_rename)
    assert not path.exists()  # the instant the issue describes
    torch.testing.assert_close(_loaded_logits(base, path), _logits(old), rtol=0, atol=0)  # put back on load
    save_adapter(new, path)
    assert sorted(os.listdir(tmp_path)) == ["adapter"]  # no stranded .old/.tmp folder left
    torch.testing.assert_close(_loaded_logits(base, path), _logits(new), rtol=0, atol=0)


def test_a_killed_save_leaves_a_complete_adapter_and_the_next_save_cleans_up(two_adapters, tmp_path):
    """Saves killed (SIGKILL) at random instants: the path always loads as the old or the new adapter, and the
    next save removes the temporary folders the dead saves left."""
    base, old, new = two_adapters
    path = tmp_path / "adapter"
    save_adapter(old, path)
    expected = [_logits(old), _logits(new)]
    rng = random.Random(0)
    for kill in range(12):
        child = os.fork()
        if child == 0:  # pragma: no cover - the child saves until it is killed
            try:
                while True:
                    save_adapter(new if kill % 2 else old, path)
            finally:
                os._exit(0)
        time.sleep(rng.uniform(0.02, 0.3))
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        loaded = _loaded_logits(base, path)
        assert any(torch.equal(loaded, e) for e in expected), f"kill {kill}: neither adapter at the path"
    (tmp_path / ".adapter.backup01.old").mkdir()  # look like a save's leftovers, hold the user's files: kept
    (tmp_path / ".adapter.backup01.old" / "notes.txt").write_text("mine")
    (tmp_path / ".adapter.12345678.tmp").mkdir()
    (tmp_path / ".adapter.12345678.tmp" / "model.bin").write_text("mine")
    save_adapter(new, path)
    assert sorted(os.listdir(tmp_path)) == [".adapter.12345678.tmp", ".adapter.backup01.old", "adapter"]
    torch.testing.assert_close(_loaded_logits(base, path), _logits(new), rtol=0, atol=0)


def test_a_file_size_limit_while_saving_is_an_oserror_and_keeps_the_old_adapter(two_adapters, tmp_path):
    _, old, new = two_adapters
    path = tmp_path / "adapter"
    save_adapter(old, path)
    before = _files(path)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))  # the weights file is larger
    try:
        with pytest.raises(OSError, match=f"cannot write the adapter folder {path}: File too large") as caught:
            save_adapter(new, path)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert caught.value.errno == 27 and _files(path) == before and sorted(os.listdir(tmp_path)) == ["adapter"]


def test_a_full_disk_while_saving_is_an_oserror_and_keeps_the_old_adapter(two_adapters, tmp_path, monkeypatch):
    import safetensors.torch
    from safetensors import SafetensorError

    _, old, new = two_adapters
    path = tmp_path / "adapter"
    save_adapter(old, path)
    before = _files(path)

    def full_disk(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    with pytest.raises(OSError, match="No space left on device") as caught:
        save_adapter(new, path)
    assert caught.value.errno == 28 and _files(path) == before and sorted(os.listdir(tmp_path)) == ["adapter"]
