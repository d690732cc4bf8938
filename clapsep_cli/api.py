"""The library API: load a model once, then separate files, folders or in-memory audio.

This is the one place where what somebody asked for becomes a query, a model and a job; the
command line, the Audacity and REAPER bridges, ``evaluate`` and ``embed`` all go through it.

    >>> from clapsep_cli.api import Separator, request
    >>> sep = Separator(device="cpu")                       # the default model, loaded on first use
    >>> job = sep.extract(["walk.wav"], request("dog barking", negative=["people talking"]))
    >>> job.results[0].target
    PosixPath('walk.dog_barking.wav')
    >>> stem, residual = sep.separate(wave, 44100, request(preset="dialogue"))  # (frames, channels)
    >>> job = sep.find(["walk.wav"], request("dog barking"))   # where the sound occurs
    >>> job.results[0].events[0]
    Event(start=3.12, end=4.58, confidence=0.71, label='dog_barking')

Queries are built by :func:`request` (texts, a preset, reference clips, negatives) and turned
into removals by :func:`removal`; the same rules hold wherever a request comes from. A job is
planned by :func:`plan` (no model needed: every input probed, every output decided) and run by
an :class:`Executor` (a :class:`Separator` here, a :class:`Cluster` of Ray workers, or the warm
service's :class:`~clapsep_cli.service.client.ServiceExecutor`; front ends get theirs from
:func:`clapsep_cli.service.choose.choose_executor`), which all report to the same :class:`Progress`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from clapsep_cli.audio.region import Region
from clapsep_cli.engine.options import DEFAULT_OVERLAP
from clapsep_cli.errors import AudioError, ClapsepError, SettingError
from clapsep_cli.events.detect import DetectOptions, Event
from clapsep_cli.events.formats import EVENT_FORMATS
from clapsep_cli.jobs.data import DEFAULT_NAME, NAME_FIELDS, EventPlan, FileResult, Item, Job, OutputPlan
from clapsep_cli.jobs.executor import Executor
from clapsep_cli.jobs.plan import check_references, plan_job
from clapsep_cli.jobs.progress import Cancelled, Progress
from clapsep_cli.models.precision import DEFAULT_PRECISION
from clapsep_cli.queries.request import DEFAULT_REMOVE_METHOD, REMOVE_METHODS, Request, removal, request
from clapsep_cli.queries.spec import AudioRef, Query

if TYPE_CHECKING:
    from clapsep_cli.jobs.cluster import Cluster
    from clapsep_cli.jobs.separator import Separator

__all__ = ["DEFAULT_NAME", "DEFAULT_OVERLAP", "DEFAULT_PRECISION", "DEFAULT_REMOVE_METHOD", "EVENT_FORMATS",
           "NAME_FIELDS", "REMOVE_METHODS", "AudioError", "AudioRef", "Cancelled", "ClapsepError", "Cluster",
           "DetectOptions", "Event", "EventPlan", "Executor", "FileResult", "Item", "Job", "OutputPlan", "Progress",
           "Query", "Region", "Request", "Separator", "SettingError", "check_references", "plan", "removal",
           "request"]

plan = plan_job  # Check every input and decide every output of a job, without a model.


# The executors load torch: they are imported on first use, so that planning, requests and the
# service's clients (which run jobs elsewhere) start without it.
_EXECUTORS = {"Separator": "clapsep_cli.jobs.separator", "Cluster": "clapsep_cli.jobs.cluster"}


def __getattr__(name: str) -> Any:
    if name in _EXECUTORS:
        import importlib

        return getattr(importlib.import_module(_EXECUTORS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
