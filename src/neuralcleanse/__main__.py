"""``python -m neuralcleanse`` and the console script."""

import os
import signal
import sys
from types import FrameType

#: as the command line's: interrupted (Ctrl-C, SIGTERM)
_INTERRUPTED = 130


def _terminated_early(signum: int, frame: FrameType | None) -> None:
    print("error: terminated (SIGTERM) while starting: nothing was done", file=sys.stderr)
    os._exit(_INTERRUPTED)


def run() -> None:
    """Import the command line (torch and the rest take a few seconds) and run it. A Ctrl-C or SIGTERM in
    those seconds ends it with the command line's one line and exit code, not a traceback."""
    previous = signal.signal(signal.SIGTERM, _terminated_early)
    try:
        from .cli import main
    except KeyboardInterrupt:
        print("error: interrupted while starting: nothing was done", file=sys.stderr)
        sys.exit(_INTERRUPTED)
    finally:
        signal.signal(signal.SIGTERM, previous)
    sys.exit(main())


if __name__ == "__main__":
    run()
