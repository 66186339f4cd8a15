"""Files the library writes: atomically, with the mode any other file the user writes would get."""
import contextlib
import json
import math
import os
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
