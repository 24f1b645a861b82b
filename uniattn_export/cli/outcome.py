"""How a command ends: its exit code and, on failure, the one line the user reads.

    0    ok
    1    validation failed (numbers outside tolerance; `bench`: a measurement failed)
    2    bad input or usage (argparse errors too): one line naming the problem and the fix
    3    internal error (a bug): one line asking for a report; the traceback only with
         UNIATTN_EXPORT_DEBUG=1
    130  interrupted by SIGINT (Ctrl-C), 143 by SIGTERM: unfinished output folders are removed

docs/cli.md carries the same table for users.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import traceback

from ..errors import UniAttnError

OK, VALIDATION_FAILED, BAD_INPUT, INTERNAL_ERROR = 0, 1, 2, 3
DEBUG_ENV = "UNIATTN_EXPORT_DEBUG"


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived. A KeyboardInterrupt, so every `except BaseException`
    cleanup (uniattn_export/output.py's temporary folders) runs while it unwinds."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_interrupted(signum: int, _frame) -> None:
    # Later signals would interrupt the cleanup that this one starts: ignore them.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Interrupted(signum)


class OneLineArgumentParser(argparse.ArgumentParser):
    """Usage errors as one line (exit 2) instead of the whole usage block; --help has it."""

    def error(self, message: str):
        self.exit(BAD_INPUT, f"{self.prog}: error: {message}. See `{self.prog} --help`.\n")


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def run_command(args: argparse.Namespace) -> int:
    """Run the parsed subcommand; every outcome becomes an exit code and at most one line."""
    prefix = f"uniattn-export {args.command}"
    in_main_thread = threading.current_thread() is threading.main_thread()  # where handlers can be set
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)} if in_main_thread else {}
    for s in previous:
        signal.signal(s, _raise_interrupted)
    try:
        return int(args.run(args) or OK)
    except UniAttnError as exc:
        print(f"{prefix}: error: {exc}", file=sys.stderr)
        return BAD_INPUT
    except KeyboardInterrupt as exc:
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        name = signal.Signals(signum).name
        print(f"{prefix}: interrupted by {name}; no partial output folder was left behind", file=sys.stderr)
        return 128 + signum
    except OSError as exc:
        # The file system refused (read-only folder, disk full, a folder where a file goes):
        # the user's environment, not a bug.
        if exc.filename is None:
            return _internal_error(prefix, exc)
        print(f"{prefix}: error: cannot use {exc.filename} ({exc.strerror}). Pick a writable location or fix the path.",
              file=sys.stderr)  # fmt: skip
        return BAD_INPUT
    except Exception as exc:  # noqa: BLE001 - every other escape is a bug, reported as one
        return _internal_error(prefix, exc)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _internal_error(prefix: str, exc: BaseException) -> int:
    if os.environ.get(DEBUG_ENV):
        traceback.print_exception(exc, file=sys.stderr)
    hint = "" if os.environ.get(DEBUG_ENV) else f"; rerun with {DEBUG_ENV}=1 for the traceback"
    print(
        f"{prefix}: internal error: {type(exc).__name__}: {_first_line(str(exc))}. This is a bug: please "
        f"report it with the command line{hint}",
        file=sys.stderr,
    )
    return INTERNAL_ERROR
