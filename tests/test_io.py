"""`_io`: atomic writes with the umask's mode, errors that name the user's path, standard JSON."""
import errno
import json
import os

import pytest

from act_lora_fast._io import atomic_write, write_json, write_text


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_written_files_get_the_umask_mode_not_0600(tmp_path, umask_022):
    """Issue 10.16: reports, scores and plots are 0644 under umask 022, as any other file a user writes."""
    write_json(tmp_path / "report.json", {"a": 1})
    write_text(tmp_path / "table.md", "| x |\n")
    with atomic_write(tmp_path / "blob.bin") as tmp:
        with open(tmp, "wb") as handle:
            handle.write(b"\0")
    for name in ("report.json", "table.md", "blob.bin"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name
    os.umask(0o077)
    write_json(tmp_path / "private.json", {})
    assert (tmp_path / "private.json").stat().st_mode & 0o777 == 0o600


def test_a_failed_write_names_the_users_path_and_leaves_no_temp_file(tmp_path):
    """Issue 10.15: the message names report.json, not the hidden temporary file it was writing."""
    target = tmp_path / "report.json"
    target.write_text("earlier\n")
    with pytest.raises(OSError) as info:
        with atomic_write(target) as tmp:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), tmp)
    assert f"cannot write {target}" in str(info.value) and ".tmp" not in str(info.value)
    assert target.read_text() == "earlier\n" and os.listdir(tmp_path) == ["report.json"]
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(OSError, match=f"cannot write {tmp_path / 'a-file' / 'report.json'}"):
        write_json(tmp_path / "a-file" / "report.json", {})


def test_json_has_no_nan():
    from act_lora_fast._io import json_text

    assert json.loads(json_text({"x": float("nan"), "y": [float("inf"), 1.5]})) == {"x": None, "y": [None, 1.5]}
