"""Files and folders the library writes: atomically, with the mode any other file the user writes would get."""
import contextlib
import errno
import json
import math
import os
import re
import shutil
import tempfile


def _umask_mode():
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def umask_mode(*, directory=False):
    """The mode a new file (0644 under umask 022) or folder (0755) of this process gets."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


@contextlib.contextmanager
def atomic_write(path):
    """Yields a temporary path next to `path`; on success one ``os.replace`` puts it in place.

    The file gets the umask's mode (0644 under 022), not mkstemp's owner-only 0600. Readers never see half a
    file; on error the temporary file is removed and `path` is untouched. Errors name `path`, not the temp file.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a directory; expected a file path to write")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    except OSError as err:
        raise OSError(err.errno, f"cannot write {path}: {err.strerror}") from None
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if err.filename in (tmp, None):
            raise OSError(err.errno, f"cannot write {path}: {err.strerror}") from err
        raise
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _json_default(obj):
    import numpy as np

    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, (set, tuple)):
        return list(obj)
    if type(obj).__module__ == "torch" or type(obj).__module__.startswith("torch."):
        return str(obj)  # torch.device, torch.dtype
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _standard(obj):
    """`obj` with NaN and ±inf as null: JSON has no such numbers, and other programs cannot read them."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: _standard(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_standard(value) for value in obj]
    return obj


def json_text(obj):
    """Standard JSON (undefined numbers as null), indented, with one trailing newline."""
    return json.dumps(_standard(obj), indent=2, default=_json_default, allow_nan=False) + "\n"


def write_text(path, text):
    with atomic_write(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
    return os.fspath(path)


def write_json(path, obj):
    """`obj` as JSON at `path`, atomically; returns the path."""
    return write_text(path, json_text(obj))


def new_figure(ncols=1, *, width=5.0, height=4.0, nrows=1):
    """A matplotlib Figure on the Agg canvas (no pyplot state, no display) and its axes as a flat list."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height * nrows), tight_layout=True)
    FigureCanvasAgg(fig)
    return fig, list(fig.subplots(nrows, ncols, squeeze=False).flat)


def save_figure(fig, path, *, dpi=110):
    """`fig` as a PNG at `path`, atomically; returns the path."""
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return os.fspath(path)


# ---------------------------------------------------------------------------------------------- folders
_RENAME_EXCHANGE = 2   # linux/fs.h: swap the two paths in one step
_AT_FDCWD = -100


def _exchange(a, b):
    """Swap paths `a` and `b` in one step (Linux's renameat2 RENAME_EXCHANGE); False where the system or the
    file system does not offer it (or `b` is a mount point)."""
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV, errno.EBUSY):
        return False
    raise OSError(code, os.strerror(code), b)


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True   # someone else's process
    return True


def _dead_saves(path, names=None):
    """The temporary folders that saves to `path` left when they died: ``.<name>.<pid>.<random>.tmp`` (the
    new contents being written) and ``.old`` (the previous contents being retired) of processes no longer
    running, or of this one (a save in this process that was cut short). Only folders that hold what such
    a save leaves (some of `names`; the retired folder `name`) are counted: never a folder of the user's."""
    parent, name = os.path.split(os.path.abspath(path))
    if not os.path.isdir(parent):
        return []
    pattern = re.compile(rf"\.{re.escape(name)}\.(?:(\d+)\.)?[a-z0-9_]{{8}}\.(tmp|old)")
    found = []
    for entry in os.listdir(parent):
        match = pattern.fullmatch(entry)
        if not match or (match[1] and int(match[1]) != os.getpid() and _pid_alive(int(match[1]))):
            continue
        folder = os.path.join(parent, entry)
        try:
            inside = set(os.listdir(folder))
        except OSError:
            continue
        expected = {name} if match[2] == "old" else set(names or inside)
        if inside <= expected:
            found.append(folder)
    return found


def recover_folder(path):
    """When folder `path` is missing because a save died between retiring it and putting the new one in place
    (a kill, a full disk), put the retired copy back; True if one was."""
    if os.path.lexists(path):
        return False
    name = os.path.basename(os.path.abspath(path))
    stranded = [d for d in _dead_saves(path) if d.endswith(".old") and os.path.isdir(os.path.join(d, name))]
    if not stranded:
        return False
    os.rename(os.path.join(max(stranded, key=os.path.getmtime), name), path)
    return True


def write_folder(path, write, *, names, what="folder"):
    """`write(folder)` into a temporary folder next to `path`, then put it in place as one unit: at every
    instant `path` holds the complete old or the complete new contents (an atomic exchange where the system
    offers one, Linux's; elsewhere two renames, and a copy stranded between them is put back by the next
    `write_folder` or `recover_folder`). Leftovers of saves that died are removed first. `names`: the files
    `write` makes; a `path` that also holds other files, or is a symlink or a mount point, stays, and only
    `names` are replaced, one by one in their order. OSError "cannot write the `what` `path`" on failure,
    with `path` as it was."""
    path = os.fspath(path)
    parent, name = os.path.split(os.path.abspath(path))
    staging = None
    try:
        os.makedirs(parent, exist_ok=True)
        recover_folder(path)
        for leftover in _dead_saves(path, names):
            shutil.rmtree(leftover, ignore_errors=True)
        staging = tempfile.mkdtemp(dir=parent, prefix=f".{name}.{os.getpid()}.", suffix=".tmp")
        write(staging)
        for entry in os.listdir(staging):
            os.chmod(os.path.join(staging, entry), umask_mode())
        os.chmod(staging, umask_mode(directory=True))
        if not os.path.lexists(path):
            os.rename(staging, path)
            return path
        whole = os.path.isdir(path) and not os.path.islink(path) and set(os.listdir(path)) <= set(names)
        if whole and _exchange(staging, path):
            return path   # `staging` now holds the old contents: removed below
        if whole:
            retired = tempfile.mkdtemp(dir=parent, prefix=f".{name}.{os.getpid()}.", suffix=".old")
            try:
                os.rename(path, os.path.join(retired, name))
            except OSError:  # a mount point, a folder in use elsewhere: replace the files instead
                os.rmdir(retired)
            else:
                os.rename(staging, path)
                shutil.rmtree(retired, ignore_errors=True)
                return path
        for entry in names:
            os.replace(os.path.join(staging, entry), os.path.join(path, entry))
        return path
    except OSError as err:
        raise OSError(err.errno, f"cannot write the {what} {path}: {err.strerror or err}") from None
    finally:
        if staging is not None and os.path.isdir(staging):
            shutil.rmtree(staging, ignore_errors=True)
