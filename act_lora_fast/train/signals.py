"""Stopping a long run cleanly: Ctrl-C (SIGINT) and SIGTERM (what schedulers send before they kill a job).

Within `stop_on_signals()` (the command line runs every command in it) both signals raise `Stopped`, a
KeyboardInterrupt, in the main thread: the run records how far it got (``"status": "interrupted"``) and the
command exits 128 + the signal's number (130 for Ctrl-C, 143 for SIGTERM). Three rules make that reliable:

- a stop is never forgotten: Python drops an exception raised inside a finaliser or a callback ("Exception
  ignored in ..."), so the signal is also recorded, and the next checkpoint (`raise_if_stopped`: every
  training step, every run of a comparison) raises it again; a command that still returns ends with the
  signal's exit code, never 0;
- the record of a stop is written once: inside `shielded()` a signal is noted, not raised, and so is a
  signal that arrives while the first one is unwinding (within `STOP_GRACE` seconds of raising it);
- outside `stop_on_signals` nothing changes (Python's own Ctrl-C; SIGTERM ends the process), so the library
  never takes over the signals of a program that embeds it.
"""
import contextlib
import signal
import threading
import time

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
STOP_GRACE = 2.0   # seconds after a raise in which a repeated signal joins the stop under way


class Stopped(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; ``exit_code`` is 128 + the signal's number."""

    def __init__(self, signum):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)

    @property
    def exit_code(self):
        return 128 + self.signum


class _State:
    def __init__(self):
        self.depth = 0            # nesting of stop_on_signals
        self.received = []        # signal numbers, in order
        self.raised_at = None     # time.monotonic() of the last raise
        self.shield = 0           # nesting of shielded()


_state = _State()


def _handle(signum, frame):
    _state.received.append(signum)
    recent = _state.raised_at is not None and time.monotonic() - _state.raised_at < STOP_GRACE
    if _state.shield or recent:
        return
    _state.raised_at = time.monotonic()
    raise Stopped(signum)


def _install():
    """Our handler for SIGINT and SIGTERM; returns the previous handlers, or None off the main thread (where
    Python allows no handlers)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return {signum: signal.signal(signum, _handle) for signum in STOP_SIGNALS}


def _restore(previous):
    for signum, handler in (previous or {}).items():
        signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


@contextlib.contextmanager
def stop_on_signals():
    """SIGINT and SIGTERM raise `Stopped` within the block (see the module docstring); nests."""
    previous = _install() if _state.depth == 0 else None
    if _state.depth == 0:
        _state.received.clear()
        _state.raised_at = None
    _state.depth += 1
    try:
        yield
    finally:
        _state.depth -= 1
        if _state.depth == 0:
            _restore(previous)
            _state.received.clear()  # a later run in this process starts afresh


def stop_requested():
    """The number of the first stop signal received within `stop_on_signals`, or None (also outside it)."""
    return _state.received[0] if _state.received and _state.depth else None


def raise_if_stopped():
    """A checkpoint: raise `Stopped` when a stop signal was received (and perhaps swallowed) earlier."""
    signum = stop_requested()
    if signum is not None and not _state.shield:
        _state.raised_at = time.monotonic()
        raise Stopped(signum)


@contextlib.contextmanager
def shielded():
    """Within the block SIGINT and SIGTERM are noted, not raised: for writing the record of a stop, which a
    second Ctrl-C must not cut short. Outside `stop_on_signals` (the library called from Python, on the
    main thread) Python's handlers are set aside for the block: a Ctrl-C in it joins the stop being
    recorded, any other signal is delivered again after it."""
    previous = _install() if _state.depth == 0 else None
    _state.shield += 1
    try:
        yield
    finally:
        _state.shield -= 1
        if previous is not None:
            _restore(previous)
            held = list(dict.fromkeys(_state.received))
            _state.received.clear()
            for signum in held:  # SIGTERM gets its own handling now; a repeated Ctrl-C joins the stop under way
                if signum != signal.SIGINT:
                    signal.raise_signal(signum)


def stop_reason(error):
    """How a report names the exception that ended a run: "KeyboardInterrupt" for Ctrl-C, "SIGTERM" for a
    termination, else the exception's type and message."""
    if isinstance(error, Stopped) and error.signum != signal.SIGINT:
        return signal.Signals(error.signum).name
    if isinstance(error, KeyboardInterrupt):
        return "KeyboardInterrupt"
    return f"{type(error).__name__}: {error}"
