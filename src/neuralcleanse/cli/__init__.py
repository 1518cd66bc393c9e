"""The ``neuralcleanse`` command line. The only place that parses arguments; no library code imports it.

Exit codes (the same table is in ``docs/bad_inputs.md``):

====  =====================================================================================================
code  meaning
====  =====================================================================================================
0     success
1     a problem with the input data, model or files (``DataError``, ``ModelError``, ``CheckpointError``,
      a file that cannot be read or written)
2     usage error: a bad option value or combination (click's usage errors, ``SettingsError``)
3     internal error (a bug): one line on stderr names the exception and the log file holding the full
      traceback (``-v`` also prints it)
130   interrupted (Ctrl-C, or SIGTERM from ``kill``, a scheduler or a container stop); what was kept, such as
      a scan's checkpoint, is said on the same line
====  =====================================================================================================

Every error is one line on stderr, ``error: <message>``, naming the problem and the file or option.
"""

from __future__ import annotations

import datetime
import os
import signal
import sys
import tempfile
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

import click

from .._io import disk_error_line
from ..errors import DataError, NeuralCleanseError, SettingsError, exception_line, first_line
from .common import Terminated

__all__ = ["app", "main", "EXIT_OK", "EXIT_INPUT", "EXIT_USAGE", "EXIT_INTERNAL", "EXIT_INTERRUPTED"]

EXIT_OK = 0
EXIT_INPUT = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3
EXIT_INTERRUPTED = 130


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="neuralcleanse")
def app() -> None:
    """Find, explain and remove backdoors in image classifiers (Neural Cleanse, IEEE S&P 2019)."""


from . import demo as _demo  # noqa: E402,F401  (registers the command)
from . import mitigate as _mitigate  # noqa: E402,F401
from . import report as _report  # noqa: E402,F401
from . import scan as _scan  # noqa: E402,F401
from . import scan_many as _scan_many  # noqa: E402,F401
from . import train as _train  # noqa: E402,F401
from . import validate as _validate  # noqa: E402,F401
from . import zoo as _zoo  # noqa: E402,F401


def _log_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "neuralcleanse"


def _write_traceback(exc: BaseException) -> Path | None:
    """Write the full traceback of ``exc`` to a new log file; its path, or None if none could be written."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = f"crash-{stamp}-{os.getpid()}.log"
    for directory in (_log_dir(), Path(tempfile.gettempdir())):
        try:
            directory.mkdir(parents=True, exist_ok=True)
            path = directory / name
            with path.open("x", encoding="utf-8") as fh:
                fh.write(f"neuralcleanse {' '.join(sys.argv)}\n{text}")
            return path
        except OSError:
            continue
    return None


def _verbose(argv: list[str]) -> bool:
    return any(a == "--verbose" or (a.startswith("-v") and set(a[1:]) == {"v"}) for a in argv)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise Terminated


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM stops a command the way Ctrl-C does (checkpoints kept and said, no half-written file),
    instead of killing the process silently; the previous handler is restored afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set signal handlers
        return
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    """Entry point: every error is one line on stderr and a documented exit code, never a traceback."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        with _sigterm_interrupts():
            app.main(args=args, prog_name="neuralcleanse", standalone_mode=False)
    except DataError as exc:  # before SettingsError: an unreadable trigger file is both
        print(f"error: {first_line(str(exc))}", file=sys.stderr)
        return EXIT_INPUT
    except SettingsError as exc:
        print(f"error: {first_line(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except NeuralCleanseError as exc:
        print(f"error: {first_line(str(exc))}", file=sys.stderr)
        return EXIT_INPUT
    except click.UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # click >= 8.2: bare command shows its help
            click.echo(exc.format_message(), err=True)
            return EXIT_USAGE
        print(f"error: {first_line(exc.format_message())}", file=sys.stderr)
        return EXIT_USAGE
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.exceptions.Abort as exc:  # Ctrl-C, or a command's own account of what was kept
        plain = "terminated (SIGTERM)" if isinstance(exc.__context__, Terminated) else "interrupted"
        print(f"error: {first_line(str(exc)) or plain}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt as exc:
        print(
            f"error: {'terminated (SIGTERM)' if isinstance(exc, Terminated) else 'interrupted'}",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    except click.ClickException as exc:  # e.g. a file click could not open
        print(f"error: {first_line(exc.format_message())}", file=sys.stderr)
        return EXIT_INPUT
    except RuntimeError as exc:
        if str(exc).startswith("Symlink loop"):  # pathlib's resolve() on a link that points at itself
            print(f"error: {first_line(exc)}: a symbolic link that leads back to itself", file=sys.stderr)
            return EXIT_INPUT
        return _internal(exc, args)
    except OSError as exc:
        line = disk_error_line(exc)
        if line is not None:
            print(f"error: {line}", file=sys.stderr)
            return EXIT_INPUT
        return _internal(exc, args)
    except SystemExit as exc:  # click's own exits are Exit exceptions here: this one is the user's code
        print(
            f"error: code the command ran (a model's forward, an --arch file) called sys.exit({exc.code!r}) "
            "(SystemExit) before the command finished",
            file=sys.stderr,
        )
        return EXIT_INPUT
    except Exception as exc:  # noqa: BLE001 (anything else is a bug: one line, the trace in a file)
        return _internal(exc, args)
    return EXIT_OK


def _internal(exc: Exception, args: list[str]) -> int:
    path = _write_traceback(exc)
    where = f"full traceback in {path}" if path is not None else "the traceback could not be saved"
    if _verbose(args):
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    print(f"error: internal error ({exception_line(exc)}); {where}", file=sys.stderr)
    return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
