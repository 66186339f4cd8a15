"""The output-folder rules, checked before any work is done.

A run owns a fixed set of names in its folder (`RUN_OUTPUTS`: ``report.json``, ``adapter/`` and the plots;
`compare` owns ``compare.*`` and its variants' folders). A folder that already holds any of them (an earlier
run's results) is refused unless ``overwrite`` is set, which deletes exactly those names first; other files
are never touched. So a folder never shows an older run's files beside a newer run's report.
"""
import contextlib
import os
import shutil
import tempfile

RUN_OUTPUTS = ("report.json", "adapter", "loss.png", "cost.png", "layer_scores.png")


def check_output_dir(path, *, option="output_dir"):
    """`path` is a folder this process can write (created if missing); OSError naming it otherwise."""
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise NotADirectoryError(f"{option} {path} is a file, not a folder")
    ancestor = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise NotADirectoryError(f"{option} {path}: {ancestor} is a file, not a folder")
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".act-lora-write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise type(err)(f"{option} {path} is not a writable folder: {err.strerror or err}") from None
    return path


def earlier_outputs(path, owned=RUN_OUTPUTS):
    """The names of `owned` that exist in folder `path`."""
    return [name for name in owned if os.path.lexists(os.path.join(os.fspath(path), name))]


def claim_output_dir(path, *, overwrite=False, owned=RUN_OUTPUTS, option="output_dir", flag="--overwrite"):
    """Check `path` (see `check_output_dir`), then refuse (FileExistsError) or, with `overwrite`, delete the
    names of `owned` it already holds. Returns the path."""
    path = check_output_dir(path, option=option)
    present = earlier_outputs(path, owned)
    if present and not overwrite:
        raise FileExistsError(f"{option} {path} already holds an earlier run's {', '.join(present)}; pass "
                              f"overwrite=True ({flag}) to replace them, or choose another folder")
    for name in present:
        target = os.path.join(path, name)
        if os.path.isdir(target) and not os.path.islink(target):
            shutil.rmtree(target)
        else:
            os.unlink(target)
    return path


@contextlib.contextmanager
def removed_if_left_empty(path):
    """Around work that creates output folder `path` (None: no folder): when the work fails and leaves the
    folder empty, and it did not exist before, remove it again, so a run stopped before writing anything
    leaves nothing behind."""
    existed = path is None or os.path.isdir(path)
    try:
        yield
    except BaseException:
        if not existed:
            try:
                os.rmdir(path)
            except OSError:
                pass  # not empty (something was written), or already gone
        raise
