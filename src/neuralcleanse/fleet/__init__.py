"""Fleets: many models scanned in one run, here or on a Ray cluster, with one summary.

The pieces know nothing of the command line: :func:`collect_models` turns model paths, folders and
manifests into :class:`ModelEntry` items; a runner (:func:`run_in_process`, :func:`run_processes`,
:func:`run_ray`) calls a *work* function on each :class:`FleetJob` and returns a :class:`ModelResult`
per model, failed ones included; :class:`FleetSummary` saves them as ``summary.json`` and
``index.html``. ``neuralcleanse scan-many`` puts them together with ``scan``'s own per-model work.
"""

from .jobs import STATUSES, VERDICT_ORDER, FleetJob, ModelResult, Work, run_job
from .local import available_cpus, run_in_process, run_processes, worker_threads
from .manifest import COLUMNS, MANIFEST_SUFFIXES, ModelEntry, read_manifest
from .ray_runner import RAY_INSTALL_HINT, check_task_fits, import_ray, ray_session, run_ray
from .sources import MODEL_SUFFIXES, collect_models, find_models, unique_names
from .summary import INDEX_FILE, SORT_KEYS, SUMMARY_FILE, FleetSummary

__all__ = [
    "COLUMNS",
    "INDEX_FILE",
    "MANIFEST_SUFFIXES",
    "MODEL_SUFFIXES",
    "RAY_INSTALL_HINT",
    "SORT_KEYS",
    "STATUSES",
    "SUMMARY_FILE",
    "VERDICT_ORDER",
    "FleetJob",
    "FleetSummary",
    "ModelEntry",
    "ModelResult",
    "Work",
    "available_cpus",
    "worker_threads",
    "check_task_fits",
    "collect_models",
    "find_models",
    "import_ray",
    "ray_session",
    "read_manifest",
    "run_in_process",
    "run_job",
    "run_processes",
    "run_ray",
    "unique_names",
]
