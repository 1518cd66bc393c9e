"""The ``neuralcleanse`` command line. The only place that parses arguments; no library code imports it."""

from __future__ import annotations

import sys

import click

from ..errors import NeuralCleanseError

__all__ = ["app", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="neuralcleanse")
def app() -> None:
    """Find, explain and remove backdoors in image classifiers (Neural Cleanse, IEEE S&P 2019)."""


from . import demo as _demo  # noqa: E402,F401  (registers the command)
from . import mitigate as _mitigate  # noqa: E402,F401
from . import report as _report  # noqa: E402,F401
from . import scan as _scan  # noqa: E402,F401
from . import train as _train  # noqa: E402,F401
from . import zoo as _zoo  # noqa: E402,F401


def main(argv: list[str] | None = None) -> int:
    """Entry point: user errors become one line on stderr and a non-zero exit code, never a traceback."""
    try:
        app.main(args=argv, prog_name="neuralcleanse", standalone_mode=False)
    except NeuralCleanseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except click.UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # click >= 8.2: bare command shows its help
            click.echo(exc.format_message(), err=True)
            return 2
        print(f"error: {exc.format_message()}", file=sys.stderr)
        return 2
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.exceptions.Abort:
        print("error: aborted", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
