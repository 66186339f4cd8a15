"""`act-lora`: the command line. Thin: each subcommand parses, calls the library, prints.

Subcommands live in small modules, each exposing ``add_commands(subparsers)``; a subparser stores its
handler as ``func`` (called with the parsed args, returning an exit code or None).
"""
import argparse
import logging
import signal
import sys

from ..train.signals import Stopped, shielded, stop_on_signals, stop_requested
from . import bench, method, train


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line, as the library's are (the usage is one --help away)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _version():
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("act-lora-fast")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "(not installed)"


def build_parser():
    parser = _Parser(
        prog="act-lora",
        description="Selective LoRA: profile activation norms, pick layers, fine-tune only those.",
    )
    parser.add_argument("--version", action="version", version=f"act-lora {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for module in (method, train, bench):
        module.add_commands(subparsers)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    # the library reports progress through logging (act_lora_fast.*); on the command line it is shown
    logging.basicConfig(format="%(message)s")
    logging.getLogger("act_lora_fast").setLevel(logging.INFO)
    with stop_on_signals():  # Ctrl-C and SIGTERM alike: the run records how far it got, exit 128 + signal
        try:
            code = args.func(args) or 0
        except (ValueError, TypeError, OSError, FloatingPointError) as err:
            # Bad input already carries a message naming the problem; a traceback would only bury it. OSError:
            # missing or unreadable paths, and Hugging Face's "model not found (offline, not cached)" errors.
            # FloatingPointError: a diverging loss (the message says where and what to change).
            print(f"act-lora {args.command}: error: {' '.join(str(err).split())}", file=sys.stderr)  # one line
            return 2
        except KeyboardInterrupt as err:
            with shielded():
                return _interrupted(args.command, err.signum if isinstance(err, Stopped) else signal.SIGINT)
        signum = stop_requested()  # a stop swallowed where nothing checked for it: never exit 0
        return code if signum is None else _interrupted(args.command, signum)


def _interrupted(command, signum):
    said = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
    print(f"act-lora {command}: {said}", file=sys.stderr)
    return 128 + signum
