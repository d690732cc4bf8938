"""Where a job runs: the one choice of executor for every front end (the command line, the
Audacity commands, the REAPER job runner). Torch-free: the local and Ray executors are only
imported when chosen."""

from __future__ import annotations

from collections.abc import Callable

from clapsep_cli import api
from clapsep_cli.errors import ClapsepError
from clapsep_cli.models.store import DEFAULT_MODEL
from clapsep_cli.service import client

SERVER_ENV = "CLAPSEP_SERVER"  # the --server mode where the caller has none of its own
EDITOR_SERVER = "require"  # an editor's click starts the service, so the next ones answer at once


def choose_executor(server: str = "auto", model: str = DEFAULT_MODEL, *, ray: str | None = None,
                    ray_cpus: int = 1, ray_workers: int | None = None, fallback: bool = False,
                    log: Callable[[str], None] | None = None, device: str = "auto",
                    precision: str = api.DEFAULT_PRECISION, overlap: float = api.DEFAULT_OVERLAP,
                    batch_size: int | None = None) -> api.Executor:
    """The executor of a job: an :class:`~clapsep_cli.api.Cluster` on the Ray cluster at ``ray``
    (``ray_cpus`` CPUs per CPU worker, at most ``ray_workers`` workers) where one is named, else
    the warm service's :class:`~clapsep_cli.service.client.ServiceExecutor` where ``server``
    (``auto``, ``never``, ``require``: :func:`~clapsep_cli.service.client.usable`) says so,
    else a :class:`~clapsep_cli.api.Separator` here.

    ``fallback``: where the service cannot be used (``require`` meets a service of another
    clapsep, one that does not answer, one that will not start), say why to ``log`` and run
    here instead of raising. ``log`` also receives what loading a model says. ``device``,
    ``precision``, ``overlap`` and ``batch_size`` mean the same to every executor.
    """
    settings = {"device": device, "precision": precision, "overlap": overlap, "batch_size": batch_size}
    if ray is not None:
        if server == "require":
            raise ClapsepError("{setting} runs the job on a Ray cluster, not in the clapsep service: "
                               "leave out --server", setting="address")
        return api.Cluster(ray, model, worker_cpus=ray_cpus, max_workers=ray_workers, **settings)
    try:
        if client.usable(server, log):
            return client.ServiceExecutor(model, log=log, **settings)
    except ClapsepError as err:
        if not fallback:
            raise
        if log is not None:
            log(f"not using the clapsep service: {err}")
    return api.Separator(model, log=log, **settings)
