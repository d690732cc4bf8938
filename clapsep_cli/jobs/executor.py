"""The executor: what runs planned jobs, wherever. :meth:`Executor.run` is each one's own (a
:class:`~clapsep_cli.jobs.separator.Separator` runs here, the warm service's
:class:`~clapsep_cli.service.client.ServiceExecutor` there, a
:class:`~clapsep_cli.jobs.cluster.Cluster` on Ray workers); planning, and extracting or finding
as planning then running, are shared. Front ends take any of them (chosen by
:func:`clapsep_cli.service.choose.choose_executor`). Torch-free."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path

from clapsep_cli.audio.region import Region
from clapsep_cli.jobs.data import EventPlan, Item, Job, OutputPlan
from clapsep_cli.jobs.plan import plan_job
from clapsep_cli.jobs.progress import Progress
from clapsep_cli.queries.request import Request


class Executor(ABC):
    """Separates and finds through :meth:`run`, which each executor defines."""

    #: Whether this executor holds the model in this process (loaded on first use), rather than
    #: handing jobs to another process that does.
    holds_model: bool = False

    @abstractmethod
    def run(self, job: Job, progress: Progress | None = None) -> Job:
        """Separate the planned job's pending files and fill in its results (the plan is run as
        it is; a job with nothing pending loads no model and contacts nothing)."""

    def plan(self, paths: Iterable[str | Path | Item], req: Request, plan: OutputPlan | EventPlan | None = None,
             region: Region | None = None, pattern: str | None = None, include_stems: bool = False) -> Job:
        """:func:`~clapsep_cli.jobs.plan.plan_job` (no model is needed for it)."""
        return plan_job(paths, req, plan, region, pattern, include_stems)

    def extract(self, paths: Iterable[str | Path | Item], req: Request, plan: OutputPlan | None = None,
                region: Region | None = None, pattern: str | None = None, include_stems: bool = False,
                progress: Progress | None = None) -> Job:
        """Separate every file (and every audio file under each folder) into stems on disk:
        :func:`plan`, then :meth:`run`. A job whose stems all exist never loads the model.

        Returns the :class:`Job`: one :class:`FileResult` per input (``ok``, ``skipped`` or
        ``failed`` with its reason); raises :class:`ClapsepError` only for what stops the whole
        job (no inputs, a missing reference clip, two inputs writing one stem)."""
        return self.run(plan_job(paths, req, plan, region, pattern, include_stems), progress)

    def find(self, paths: Iterable[str | Path | Item], req: Request, plan: EventPlan | None = None,
             region: Region | None = None, pattern: str | None = None, include_stems: bool = False,
             progress: Progress | None = None) -> Job:
        """Find where the sound ``req`` describes occurs in every file (and every audio file
        under each folder): :func:`plan` with an :class:`EventPlan` (default: default
        :class:`DetectOptions`, no events file), then :meth:`run`.

        Returns the :class:`Job`; each ``ok`` result's ``events`` lists the :class:`Event` s
        found (times in seconds from the file's start, ``region`` or not), and its events file,
        where the plan names a format, is ``target``. Raises as :meth:`extract` does.
        """
        return self.run(plan_job(paths, req, plan or EventPlan(), region, pattern, include_stems), progress)
