"""Where shard tasks run: in this process, in a pool of local processes, or on a Dask cluster
(a scheduler address, or a local cluster of worker processes). Results come back in task order,
so nothing downstream depends on the engine or on which task finished first. Workers read and
write the work directory themselves: on a cluster it must be on a shared filesystem."""

import logging
import multiprocessing
import os
from collections.abc import Callable, Sequence


from ...errors import UserError
from ...progress import Progress


class Engine:
    workers = 1

    def map(self, fn: Callable, tasks: Sequence, desc: str) -> list:
        return [fn(task) for task in progress(tasks, desc)]

    def close(self):
        pass


def start_method() -> str:
    """fork where there is one: spawned workers would import the command line (and torch) again."""
    return "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"


def progress(items, desc: str, total: int | None = None):
    """Yield the items, counting them as shards done (attnlab.progress: a bar on a terminal, plain
    lines elsewhere, nothing with --quiet)."""
    items = list(items) if total is None else items
    with Progress(len(items) if total is None else total, "shard", desc) as bar:
        for item in items:
            yield item
            bar.update()


class ProcessEngine(Engine):
    def __init__(self, workers: int):
        self.workers = workers
        self.pool = multiprocessing.get_context(start_method()).Pool(workers)

    def map(self, fn: Callable, tasks: Sequence, desc: str) -> list:
        return list(progress(self.pool.imap(fn, tasks), desc, total=len(tasks)))

    def close(self):
        self.pool.close()
        self.pool.join()


class DaskEngine(Engine):
    def __init__(self, workers: int, scheduler: str | None = None):
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise UserError("--engine dask needs dask.distributed: pip install 'attnlab[curate]'") from None
        self.cluster = None
        if scheduler is None:
            import dask

            with dask.config.set({"distributed.worker.multiprocessing-method": start_method()}):
                self.cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                            dashboard_address=None, silence_logs=logging.ERROR)
        try:
            self.client = Client(self.cluster or scheduler, timeout="30s")
        except OSError as err:
            raise UserError(f"cannot reach the Dask scheduler {scheduler}: {err}") from None
        self.workers = len(self.client.scheduler_info()["workers"])

    def map(self, fn: Callable, tasks: Sequence, desc: str) -> list:
        from distributed import as_completed

        futures = self.client.map(fn, tasks, pure=False)
        for _ in progress(as_completed(futures), desc, total=len(futures)):
            pass
        return self.client.gather(futures)

    def close(self):
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def make_engine(kind: str = "processes", workers: int | None = None, scheduler: str | None = None) -> Engine:
    """kind "processes" (workers default: every core; 1 runs in this process) or "dask"."""
    if workers is not None and workers < 1:
        raise UserError("--workers must be at least 1")
    workers = workers or cpu_count()
    if kind == "dask":
        return DaskEngine(workers, scheduler)
    if scheduler is not None:
        raise UserError("--scheduler needs --engine dask")
    return Engine() if workers == 1 else ProcessEngine(workers)
