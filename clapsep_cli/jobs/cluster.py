"""Jobs on a Ray cluster: :class:`Cluster`, the executor whose workers are Ray actors; stems land
on shared storage.

The driver (this process) plans the job exactly as a local run does (:func:`~clapsep_cli.api.plan`,
no model). :meth:`Cluster.run` starts a pool of :class:`Worker` actors (each a
:class:`~clapsep_cli.jobs.session.Session`, one model load: one per GPU where the cluster has
GPUs, else one per ``worker_cpus`` CPUs), has the first compute the query's conditioning vector
and hands each worker one pending file at a time with it, as plain data
(:func:`~clapsep_cli.jobs.data.to_data`). A worker separates with the same
:class:`~clapsep_cli.jobs.run.Runner` and streaming engine as a local run, writing stems
atomically where the plan says (next to the sources or under the output folder, which all
nodes must see at the same paths), and sends its result back as plain data; errors keep their
class and message. Results come back into the job in input order, so the report is the local
one plus a ``ray`` section.

Faults: a worker process that dies is restarted by Ray and its file retried (Ray's actor
restarts and task retries); the stem of a killed attempt is never published, and its temporary
file is removed when the job ends. A driver killed mid-job leaves written stems in place; run
again, they are skipped like in a local run.

Ray prints notices (a worker died, ...) on the driver's standard output: while connected, that
output goes to standard error, so stdout carries only what the caller prints.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from typing import Any

import torch

from clapsep_cli.audio import atomic
from clapsep_cli.engine.options import DEFAULT_OVERLAP, EngineOptions
from clapsep_cli.errors import ClapsepError, SettingError, first_line
from clapsep_cli.jobs.data import FileResult, Job, from_data, pending, to_data
from clapsep_cli.jobs.executor import Executor
from clapsep_cli.jobs.progress import Progress
from clapsep_cli.jobs.run import Runner, segments_of
from clapsep_cli.jobs.session import Session
from clapsep_cli.models import store
from clapsep_cli.models.precision import DEFAULT_PRECISION
from clapsep_cli.queries.spec import Query

# clapsep is not on PyPI: its extras install from the checkout it was installed from.
EXTRA = "pip install -e '.[ray]' in the clapsep checkout"
# How often Ray restarts a worker that died, and retries the file it held, before the file fails.
RETRIES = 3
# How long the driver waits for a cluster address to take a connection.
CONNECT_SECONDS = 10


def require_ray() -> Any:
    """The ``ray`` module, or one clear error naming the extra that installs it."""
    try:
        import ray
    except ImportError:
        raise ClapsepError(f"{{setting}} needs Ray, which is not installed: {EXTRA}",
                           setting="address") from None
    return ray


class Cluster(Executor):
    """Runs jobs on the Ray cluster at ``address``: ``auto`` (the one ``RAY_ADDRESS`` names, else
    one Ray finds on this machine), ``local`` (start one on this machine, on 127.0.0.1 only) or a
    cluster address (``host:port``, ``ray://host:port``).

    ``device``, ``precision``, ``overlap`` and ``batch_size`` mean what they mean locally and
    are resolved on each worker. CPU workers take ``worker_cpus`` CPUs each; GPU workers one GPU
    and one CPU. ``max_workers`` caps the pool (default: as many as the cluster holds).
    """

    def __init__(self, address: str, model: str = store.DEFAULT_MODEL, *, device: str = "auto",
                 precision: str = DEFAULT_PRECISION, overlap: float = DEFAULT_OVERLAP,
                 batch_size: int | None = None, worker_cpus: int = 1, max_workers: int | None = None):
        self.ray = require_ray()
        if not address.strip():
            raise SettingError("address", "needs an address: auto, local or host:port")
        if worker_cpus < 1:
            raise SettingError("worker_cpus", f"must be at least 1 (got {worker_cpus})")
        if max_workers is not None and max_workers < 1:
            raise SettingError("max_workers", f"must be at least 1 (got {max_workers})")
        kind = device.strip().lower().split(":")[0]
        if kind not in ("auto", "cpu", "cuda"):
            raise SettingError("device", f"on a cluster must be auto, cpu or cuda (got {device!r})")
        self.address, self.model, self.device_kind, self.precision = address.strip(), model, kind, precision
        self.overlap, self.batch_size = overlap, batch_size
        self.worker_cpus, self.max_workers = worker_cpus, max_workers

    def run(self, job: Job, progress: Progress | None = None) -> Job:
        """Separate the planned job's pending files on the cluster (connecting only if there are any)."""
        started = time.perf_counter()
        job.model, job.device, job.precision = self.model, None, self.precision
        todo = {id(r) for r in pending(job.results)}
        pending_at = [i for i, r in enumerate(job.results) if id(r) in todo]
        if pending_at:
            try:
                with _stdout_to_stderr(), self._connected() as address:
                    self._run(job, pending_at, progress, address)
            finally:
                _remove_abandoned(job.results)
        job.total_seconds += time.perf_counter() - started
        return job

    @contextlib.contextmanager
    def _connected(self) -> Iterator[str]:
        ray = self.ray
        kwargs: dict[str, Any] = dict(log_to_driver=False, logging_level=logging.WARNING)
        if self.address == "local":
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # the cluster started here reports nothing
            kwargs.update(address="local", include_dashboard=False, _node_ip_address="127.0.0.1")
        else:
            kwargs.update(address=self.address)
        _check_reachable(self.address)
        try:
            context = ray.init(**kwargs)
        except ConnectionError:
            raise ClapsepError("no Ray cluster found (start one with `ray start --head`, or give its address "
                               "to {setting} or in RAY_ADDRESS)", setting="address") from None
        except Exception as err:  # noqa: BLE001 - Ray raises ValueError, RuntimeError, its own errors...
            raise ClapsepError(f"cannot reach the Ray cluster {self.address!r} ({{setting}}): {first_line(err)}",
                               setting="address") from None
        try:
            yield context.address_info.get("gcs_address") or self.address
        finally:
            ray.shutdown()

    def _pool_shape(self) -> tuple[int, dict[str, float], str]:
        """(how many workers fit, the resources of one, the device each uses)."""
        nodes = [n["Resources"] for n in self.ray.nodes() if n.get("Alive")]
        gpus = sum(int(r.get("GPU", 0)) for r in nodes)
        if self.device_kind != "cpu" and gpus:
            return gpus, {"num_gpus": 1, "num_cpus": 1}, "cuda"
        if self.device_kind == "cuda":
            raise ClapsepError("device cuda requested but the Ray cluster has no GPUs (try {setting} cpu)",
                               setting="device")
        fit = sum(int(r.get("CPU", 0) // self.worker_cpus) for r in nodes)
        if not fit:
            raise ClapsepError(f"no node of the Ray cluster has {self.worker_cpus} CPUs for a worker "
                               "(lower {setting})", setting="worker_cpus")
        return fit, {"num_cpus": self.worker_cpus, "num_gpus": 0}, "cpu"

    def _run(self, job: Job, pending: list[int], progress: Progress | None, address: str) -> None:
        ray = self.ray
        fit, resources, device = self._pool_shape()
        count = min(fit, len(pending), self.max_workers or fit)
        worker_class = ray.remote(max_restarts=RETRIES, max_task_retries=RETRIES, **resources)(Worker)
        actors = [worker_class.remote(self.model, device, self.precision, self.overlap, self.batch_size)
                  for _ in range(count)]
        try:
            states = ray.get([a.ready.remote() for a in actors])
            for state in states:
                if "error" in state:
                    raise from_data(state["error"])
            # The query's conditioning vector, computed once (on the first worker) for all of them.
            answer = ray.get(actors[0].condition.remote(job.request.query))
        except ray.exceptions.RayError as err:
            raise ClapsepError(f"a Ray worker could not start: {first_line(err)}") from None
        if "error" in answer:
            raise from_data(answer["error"])
        cond, invert = answer["condition"], job.request.invert
        job.model_loaded = True
        job.device, job.precision = states[0]["device"], states[0]["precision"]
        job.load_seconds = max(s["load_seconds"] for s in states)
        job.query_seconds = answer["seconds"]
        job.ray = {"address": address, "workers": count, "worker_resources": {
            "CPU": resources["num_cpus"], "GPU": resources["num_gpus"]}}
        if progress is not None:
            progress.start_job(len(pending), f"on {count} Ray workers")
        queue = list(reversed(pending))
        idle = list(actors)
        running: dict[Any, tuple[int, Any]] = {}
        unavailable = dict.fromkeys(pending, 0)  # a file's calls that met its worker restarting
        while queue or running:
            while queue and idle:
                index, actor = queue.pop(), idle.pop()
                result = job.results[index]
                running[actor.separate.remote(to_data(result), cond, invert)] = (index, actor)
            done, _ = ray.wait(list(running), num_returns=1)
            index, actor = running.pop(done[0])
            result = job.results[index]
            try:
                result.take(from_data(ray.get(done[0])))
                idle.append(actor)
            except ray.exceptions.ActorUnavailableError as err:  # killed mid-call and restarting
                unavailable[index] += 1
                if unavailable[index] <= RETRIES:  # the file goes again (its stems are written whole or not at all)
                    time.sleep(0.5 * unavailable[index])
                    queue.append(index)
                    idle.append(actor)
                    continue
                result.settle("failed", ClapsepError(f"{result.input}: its Ray worker stayed unavailable "
                                                     f"({first_line(err)})"))
            except ray.exceptions.RayActorError as err:  # it died more often than Ray restarts a worker
                result.settle("failed", ClapsepError(f"{result.input}: its Ray worker was lost for good "
                                                     f"({first_line(err)})"))
            except ray.exceptions.RayTaskError as err:  # an unexpected error; the worker goes on
                result.settle("failed", ClapsepError(f"{result.input}: {first_line(err.cause or err)}"))
                idle.append(actor)
            if progress is not None:
                _report(progress, result, self.overlap)
            if not idle and not running and queue:
                for i in queue:
                    job.results[i].settle("failed", ClapsepError(f"{job.results[i].input}: every Ray worker was lost"))
                queue.clear()
        stats = []
        for actor in idle:
            try:
                stats.append(ray.get(actor.stats.remote()))
            except ray.exceptions.RayActorError:  # still restarting after a kill: its counts died with it
                continue
        job.embeddings = {"from_cache": sum(s["from_cache"] for s in stats),
                          "computed": sum(s["computed"] for s in stats),
                          "text_encoder_loaded": any(s["text_encoder_loaded"] for s in stats)}


class Worker:
    """One model load on one Ray worker; separates the files the driver hands it, one at a time."""

    def __init__(self, model: str, device: str, precision: str, overlap: float, batch_size: int | None):
        self.state: dict[str, Any]
        try:
            self.session = Session(model, device=device, precision=precision, overlap=overlap, batch_size=batch_size)
            self.session.model  # noqa: B018 - loaded now, so that a worker that cannot load says so at once
            self.state = {"device": str(self.session.device), "precision": self.session.precision,
                          "load_seconds": self.session.load_seconds}
        except ClapsepError as err:  # reported by the driver as the local run reports it
            self.state = {"error": to_data(err)}

    def ready(self) -> dict[str, Any]:
        return self.state

    def condition(self, query: Query) -> dict[str, Any]:
        """The query's conditioning vector, as the local run computes it, and the seconds it took."""
        try:
            vector = self.session.conditioning(query)
        except ClapsepError as err:
            return {"error": to_data(err)}
        return {"condition": vector, "seconds": self.session.query_seconds}

    def separate(self, data: Any, condition: torch.Tensor, invert: bool) -> Any:
        """Separate one planned result (:func:`~clapsep_cli.jobs.data.to_data` of a
        :class:`FileResult`); the result, filled in, as data (a library error fails the file)."""
        result = from_data(data)
        session = self.session
        try:
            Runner(session.model, condition, session.options, invert=invert).run([result])
        except ClapsepError as err:
            result.settle("failed", err)
        return to_data(result)

    def stats(self) -> dict[str, Any]:
        return self.session.embedding_counts()


def _report(progress: Progress, result: FileResult, overlap: float) -> None:
    """A file finished on a worker, told to ``progress`` as a local run tells it."""
    segments = segments_of(result.planned, EngineOptions(overlap=overlap)) if result.planned else 0
    seconds = (result.planned.last - result.planned.first) / result.planned.info.rate if result.planned else 0.0
    progress.start_file(result.input, segments, seconds)
    if result.status == "ok":
        progress.advance(segments)
    progress.end_file(result)


def _check_reachable(address: str) -> None:
    """Refuse at once a ``HOST:PORT`` (given, or ``auto``'s RAY_ADDRESS) that takes no connection:
    Ray itself retries an unreachable cluster for minutes."""
    target = os.environ.get("RAY_ADDRESS", "") if address == "auto" else address
    if not target or target in ("auto", "local") or "://" in target:
        return
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise SettingError("address", f"must be auto, local, HOST:PORT or ray://HOST:PORT (got {target!r})")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_SECONDS).close()
    except OSError as err:
        raise ClapsepError(f"cannot reach the Ray cluster at {target} ({{setting}}): {err.strerror or err}",
                           setting="address") from None


def _remove_abandoned(results: list[FileResult]) -> None:
    """Temporary files of this job's stems that no process holds (a killed worker's) go."""
    for r in results:
        for out in (r.target, r.residual):
            if out is not None:
                atomic.remove_abandoned(out)


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Send everything written to file descriptor 1 (Ray's notices included) to 2 meanwhile."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
