"""Output files written behind the caller: a few threads, a bounded queue, errors raised in the caller.

``detect`` and ``report`` compute an image's record and overlay, then hand the writes to a :class:`BackgroundWriter`
and go on with the next image, so writing overlaps compute. Each job writes its files atomically (temporary file, then
rename: :func:`vlm_ad._cache.atomic_write_bytes`), so a file is either whole or absent, whatever happens. If a job
fails, its error is raised in the caller at the next :meth:`~BackgroundWriter.submit` or at the end; if the caller
fails (or is interrupted with Ctrl-C), jobs not yet started are dropped and the running ones finish their file, so
nothing is left half-written; with ``finish_on_error=True`` the queued jobs are written too (at most ``pending``), for
callers whose jobs record finished work that a rerun would otherwise redo (``report``'s records).
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

__all__ = ["BackgroundWriter"]


class BackgroundWriter:
    """Run write jobs in ``threads`` threads, at most ``pending`` queued or running (``submit`` waits beyond that).

    ``threads=0`` runs each job in the caller at ``submit`` (the one-thread behaviour). Use it as a context manager:
    a clean exit waits for every job and raises the first job error; an exit by an exception drops the queued jobs,
    waits for the running ones and lets the exception through.

    Jobs that must happen in order (e.g. appending lines to one file) need ``threads=1``. ``finish_on_error``: an
    exit by an exception of the caller still runs the queued jobs (a job's own error still drops them).
    """

    def __init__(self, threads: int = 2, *, pending: int = 16, name: str = "vlm-ad-write",
                 finish_on_error: bool = False) -> None:
        if threads < 0 or pending < 1:
            raise ValueError(f"threads must be >= 0 and pending >= 1, got {threads} and {pending}")
        self._finish_on_error = finish_on_error
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix=name) if threads else None
        self._slots = threading.BoundedSemaphore(pending)
        self._futures: deque[Future] = deque()
        self._error: BaseException | None = None
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> None:
        """Queue ``fn(*args, **kwargs)``; raises the error of an earlier job, if one failed."""
        self._raise()
        if self._pool is None:
            fn(*args, **kwargs)
            return
        self._slots.acquire()  # bounded: the caller waits while ``pending`` jobs are queued or running
        try:
            fut = self._pool.submit(fn, *args, **kwargs)
        except BaseException:
            self._slots.release()
            raise
        fut.add_done_callback(self._done)
        self._futures.append(fut)
        while self._futures and self._futures[0].done():
            self._futures.popleft()

    def _done(self, fut: Future) -> None:
        self._slots.release()
        if not fut.cancelled() and fut.exception() is not None:
            with self._lock:
                self._error = self._error or fut.exception()

    def _raise(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            self.close(cancel=True)
            raise err

    def close(self, *, cancel: bool = False, quiet: bool = False) -> None:
        """Wait for the jobs (``cancel``: drop those not started), then raise the first job error, if any (not when
        ``cancel`` or ``quiet``: the caller is already leaving by another exception)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=cancel)
        self._futures.clear()
        if self._error is not None and not (cancel or quiet):
            err, self._error = self._error, None
            raise err

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
            return
        self.close(cancel=not self._finish_on_error or self._error is not None, quiet=True)
