"""Write docs/bad_inputs.md from the bad-input corpus, as the commands actually print it.

Runs ``tests/test_bad_inputs.py`` with ``NC_BAD_INPUTS_TABLE`` set (every case appends what it printed and
its exit code), then renders the table. Usage::

    .venv/bin/python scripts/bad_inputs_table.py > docs/bad_inputs.md
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

HEADER = """# Bad input

No input gets a traceback. Every problem is **one line** on stderr, `error: <message>`, naming the
problem and the file or option, with one of these exit codes:

| exit code | meaning |
|---|---|
| 0 | success |
| 1 | a problem with the input data, model or files (`DataError`, `ModelError`, `CheckpointError`, a file that cannot be read or written) |
| 2 | usage error: a bad option value or combination, an unusable output path (click's usage errors, `SettingsError`) |
| 3 | internal error — a bug: `error: internal error (<ExceptionType>: <first line>); full traceback in <log file>` (the log is written under `$XDG_CACHE_HOME/neuralcleanse/`, else the temp directory; `-v` also prints the traceback) |
| 130 | interrupted: Ctrl-C, or SIGTERM (`kill`, a batch scheduler, `docker stop`); the line says what was kept (a scan's checkpoint: `--resume` continues) |

Everything that can be checked before the work is checked before it: option values, output paths
(not a file, not occupied without `--force`, writable), zoo spec fields, the model running on the images
and giving finite scores, labels and class counts, checkpoint identity and reference scans. No training or
trigger optimisation starts on bad input, and a failed command leaves nothing behind (results are written
to a temporary directory beside the output and renamed into place only when complete).

The Python API raises the same errors (`neuralcleanse.errors`): `SettingsError` (exit code 2 in the
CLI) and `DataError` / `ModelError` / `CheckpointError` (exit code 1), each with a one-line message.

The table below is generated from the test corpus (`tests/test_bad_inputs.py`) by
`scripts/bad_inputs_table.py`: each row is a case the tests run, with the message as printed (the test's
temporary directory is shown as `TMP`, its model directory as `MODEL`, its scan report as `SCAN`).
"""


def collect() -> list[dict[str, object]]:
    with tempfile.TemporaryDirectory() as tmp:
        table = Path(tmp) / "cases.jsonl"
        env = {**os.environ, "NC_BAD_INPUTS_TABLE": str(table)}
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_bad_inputs.py"]
        cmd += ["-k", "not docs_table"]  # the check of this very table
        done = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True, check=False)
        if done.returncode != 0:
            sys.stderr.write(done.stdout)
            raise SystemExit("the bad-input corpus failed; fix it before writing the table")
        return [json.loads(line) for line in table.read_text(encoding="utf-8").splitlines()]


def cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render(rows: list[dict[str, object]]) -> str:
    cli = [r for r in rows if not str(r["id"]).startswith("api-")]
    api = [r for r in rows if str(r["id"]).startswith("api-")]
    out = [
        HEADER,
        f"\n## Command line ({len(cli)} cases)\n",
        "| case | message (as printed) | exit code |",
        "|---|---|---|",
    ]
    out += [f"| {cell(r['what'])} | `{cell(r['message'])}` | {r['code']} |" for r in cli]
    out += [
        f"\n## Python API ({len(api)} cases)\n",
        "| case | exception message | CLI exit code |",
        "|---|---|---|",
    ]
    out += [f"| `{cell(r['what'])}` | `{cell(r['message'])}` | {r['code']} |" for r in api]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render(collect()))
