"""One run per output folder: an exclusive lock, so that two runs never write into one folder at once.

``with output_dir_lock(path):`` around a command's work (train, compare, stability and ablate take it) holds
an advisory ``flock`` on ``path/.act-lora.lock`` for the block; a second run that asks for the folder, in any
process on the machine, is refused at once with `FolderInUseError`, which names the process holding it. The
lock nests within one process (compare locks its folder, then each run's); the file is removed when the
outermost block ends, and a killed process's lock is released by the operating system.
"""
import contextlib
import errno
import functools
import json
import os
import sys
import time
import warnings

from .. import _dist
from .outputs import check_output_dir

LOCK_NAME = ".act-lora.lock"
_held = {}   # real path of a locked folder -> [file descriptor, nesting depth]


class FolderInUseError(OSError):
    """The output folder is locked by another run."""


def _holder_text():
    argv = sys.argv or ["python"]
    program = "act-lora" if "act_lora_fast" in argv[0] or argv[0].endswith("act-lora") else os.path.basename(argv[0])
    return json.dumps({"pid": os.getpid(), "command": " ".join([program, *argv[1:]]),
                       "started": time.strftime("%Y-%m-%d %H:%M:%S")})


def _describe_holder(lock_file):
    """"pid N: COMMAND, started T" from the lock file (written right after it is locked: retried briefly)."""
    for _ in range(20):
        try:
            with open(lock_file, encoding="utf-8") as handle:
                holder = json.loads(handle.read())
            return f"pid {holder['pid']}: {holder['command']}, started {holder['started']}"
        except (OSError, ValueError, KeyError, TypeError):
            time.sleep(0.02)
    return "a process that has not said which"


def _acquire(path, option):
    try:
        import fcntl
    except ImportError:  # Windows
        return _unlocked(path, option)
    lock_file = os.path.join(path, LOCK_NAME)
    while True:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FolderInUseError(f"{option} {path} is in use by another run ({_describe_holder(lock_file)}); "
                                   "wait for it to finish or choose another folder") from None
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                return _unlocked(path, option)
            raise
        try:  # the previous holder may have removed the file between our open and our lock: lock the new one
            current = os.stat(lock_file)
        except FileNotFoundError:
            current = None
        if current is not None and os.path.samestat(current, os.fstat(fd)):
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, _holder_text().encode())
    return fd


def _unlocked(path, option):
    warnings.warn(f"{option} {path}: this system or file system offers no file locks, so nothing keeps a second "
                  "run from writing into this folder at the same time", UserWarning, stacklevel=5)
    return None


@contextlib.contextmanager
def output_dir_lock(path, *, option="output_dir"):
    """Hold the exclusive lock on output folder `path` (checked and created, see `check_output_dir`) for the
    block; `FolderInUseError` (an OSError) when another process holds it. When the block fails and leaves a
    folder it created empty, the folder is removed again: a run stopped before writing anything leaves
    nothing. `path` None: no folder, no lock."""
    if path is None:
        yield
        return
    existed = os.path.isdir(path)
    path = check_output_dir(path, option=option)
    key = os.path.realpath(path)
    if key in _held:
        _held[key][1] += 1
    else:
        try:
            _held[key] = [_acquire(path, option), 1]
        except BaseException:
            _remove_if_empty(path, existed)
            raise
    try:
        yield
    except BaseException:
        _release(key, path)
        _remove_if_empty(path, existed)
        raise
    _release(key, path)


def _release(key, path):
    _held[key][1] -= 1
    if _held[key][1] == 0:
        fd = _held.pop(key)[0]
        if fd is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(path, LOCK_NAME))  # before unlocking: a waiter then sees a new file
            os.close(fd)


def _remove_if_empty(path, existed):
    if not existed and os.path.realpath(path) not in _held:
        with contextlib.suppress(OSError):  # not empty (something was written), or already gone
            os.rmdir(path)


def locks_output_dir(function):
    """Decorator: ``function(..., output_dir=...)`` runs holding `output_dir_lock` on its `output_dir` (on the
    main process of a distributed run; no folder, no lock)."""
    @functools.wraps(function)
    def locked(*args, output_dir=None, **kwargs):
        with output_dir_lock(output_dir if output_dir and _dist.is_main_process() else None):
            return function(*args, output_dir=output_dir, **kwargs)

    return locked
