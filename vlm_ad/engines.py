"""Engines: who computes a batch's per-image results. The writer (exactly-once keys, manifest, lock, compaction in
:mod:`vlm_ad.report`, output files in :func:`vlm_ad.pipeline.detect_images`) stays in the driver whatever the engine.

* :class:`LocalEngine` runs the given pipeline in this process: one image after the other (``batch_size=1``), or
  pipelined in batches: a thread pool decodes (and, for an exported runtime, resizes) the next images while the
  detector runs the current batch (images of one input shape share each network call and one kNN search), and the
  pool writes overlays while the next batch runs. Records equal the one-at-a-time path's (tested), up to float
  rounding of batched convolutions (scores within 1e-5 relative).
* :class:`RayEngine` starts a local Ray cluster (or joins one started with ``ray start --head``), loads the model
  once per worker actor (:class:`PipelineSpec`) and maps batches of images over the actors; a worker runs each batch
  as :class:`LocalEngine` does (decoded in two threads, one detector call for the batch). Results (the record as
  JSON and the overlay PNG bytes) stream back to the driver as batches finish. A worker that dies mid-batch is
  replaced and its batch is given to another worker; a batch that loses its worker twice is split and each image
  tried once more alone, and an image whose worker dies then is recorded as failed (a rerun retries it). Image,
  model and exemplar paths must be readable by every worker (one machine, or a shared filesystem).

Both engines call the same per-image task (:func:`explain_item`, :func:`detect_item`; batched: :func:`explain_batch`,
:func:`detect_batch`), and each task builds its record in one function whether the image's map came alone or with a
batch, so they give the same records.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

from vlm_ad.errors import ConfigError
from vlm_ad.pipeline import Pipeline, Record

__all__ = ["ENGINES", "Computed", "Engine", "LocalEngine", "PipelineSpec", "RayEngine", "WorkItem", "create_engine",
           "detect_batch", "detect_item", "explain_batch", "explain_item", "start_local_cluster"]

ENGINES = ("local", "ray")
_MAX_TRIES = 2  # times a batch may lose its worker before its images are recorded as failed
# detectors whose result for an image does not depend on the other images of a predict call, so a batch may share one
# call (others, e.g. mutual, which scores the images of a call against each other, are called image by image)
BATCH_INVARIANT = ("patchcore",)


@dataclass(frozen=True)
class WorkItem:
    """One image of a batch: its id, path (as recorded), output stem (unique in the batch), exactly-once key and
    the absolute file a worker reads (another process may not share this one's working directory)."""

    image_id: str
    path: str
    stem: str
    key: str | None = None
    file: str = ""

    def __post_init__(self) -> None:
        if not self.file:
            object.__setattr__(self, "file", str(Path(self.path).absolute()))


@dataclass
class Computed:
    """One image's result as it travels back to the writer: the record (JSON) and the overlay PNG to write."""

    item: WorkItem
    record: dict[str, Any]
    overlay_png: bytes | None = None
    seconds: float = 0.0


@dataclass
class PipelineSpec:
    """How to build the same :class:`~vlm_ad.pipeline.Pipeline` in another process.

    Args:
        model_dir: a model folder written by ``vlm-ad fit`` (read by every worker).
        reasoner: a picklable zero-argument factory of the reasoner (e.g. ``ReasonerOptions(...).build``); None
            for the grounded reasoner.
        exemplar_root: the folder the model was fitted on, or None.
        threshold: overrides the model's image threshold when given.
        library: a defect library folder that names regions, or None.
        runtime: ``torch`` (the model folder) or ``onnx``/``openvino`` (an export folder; :mod:`vlm_ad.runtime`).
        runtime_settings: that runtime's knobs (:data:`vlm_ad.runtime.RUNTIME_SETTINGS`), None for its defaults.
    """

    model_dir: str | Path
    reasoner: Callable[[], Any] | None = None
    exemplar_root: str | Path | None = None
    threshold: float | None = None
    library: str | Path | None = None
    runtime: str = "torch"
    runtime_settings: dict[str, Any] | None = None

    def __post_init__(self) -> None:  # workers may run in another working directory
        self.model_dir = Path(self.model_dir).absolute()
        if self.exemplar_root is not None:
            self.exemplar_root = Path(self.exemplar_root).absolute()
        if self.library is not None:
            self.library = Path(self.library).absolute()

    def build(self, threads: int | None = None) -> Pipeline:
        """The pipeline (``threads``: intra-op threads of an onnx/openvino runtime; None = its default)."""
        from vlm_ad.runtime import load_runtime_detector

        kw = {"threads": threads} if self.runtime != "torch" else {}
        det = load_runtime_detector(self.model_dir, self.runtime, settings=self.runtime_settings, **kw)
        if self.threshold is not None:
            det.set_threshold(self.threshold)
        namer = None
        if self.library is not None:
            from vlm_ad.naming import DefectLibrary

            namer = DefectLibrary.load(self.library)
        return Pipeline(det, self.reasoner() if self.reasoner else None, namer=namer,
                        exemplar_root=self.exemplar_root)


# ----------------------------------------------------------------------------------------------- per-image tasks
# A task's record is built by one function (_detect_result, _explain_result) from the image's decoded sample and
# map, whether the map came from a call for this image alone (detect_item, explain_item) or for a batch.
def explain_item(pipeline: Pipeline, item: WorkItem) -> Computed:
    """``vlm-ad report``'s step for one image: the whole chain, its record and overlay; any failure is recorded."""
    t0 = time.perf_counter()
    decoded = _decode(item, item.image_id, None)
    try:
        [amap] = _predict(pipeline, [decoded])
    except Exception as exc:  # noqa: BLE001 - a batch records any per-image failure and goes on
        return _explain_result(pipeline, item, exc, None, time.perf_counter() - t0)
    return _explain_result(pipeline, item, decoded[0], amap, time.perf_counter() - t0)


def detect_item(pipeline: Pipeline, item: WorkItem) -> Computed:
    """``vlm-ad detect``'s step for one image: score, map, regions and overlay (no explanation)."""
    from vlm_ad.errors import VlmAdError

    t0 = time.perf_counter()
    decoded = _decode(item, Path(item.path).name, None)
    try:
        [amap] = _predict(pipeline, [decoded])
    except VlmAdError as exc:
        return _detect_result(item, exc, None, time.perf_counter() - t0)
    return _detect_result(item, decoded[0], amap, time.perf_counter() - t0)


def _detect_result(item: WorkItem, sample: Any, amap: Any, seconds: float) -> Computed:
    """One image's ``detect`` result from its sample (or the error that stopped it: a :class:`VlmAdError` is
    recorded, any other is raised) and its map: the JSON record and the overlay PNG."""
    from vlm_ad.errors import VlmAdError
    from vlm_ad.pipeline import detection_outputs

    t0 = time.perf_counter()
    try:
        if isinstance(sample, BaseException):
            raise sample
        record, png = detection_outputs(amap, sample.image, region_threshold=None)
    except VlmAdError as exc:
        return Computed(item, {"error": str(exc)}, None, seconds + time.perf_counter() - t0)
    return Computed(item, record, png, seconds + time.perf_counter() - t0)


def _explain_result(pipeline: Pipeline, item: WorkItem, sample: Any, amap: Any, seconds: float) -> Computed:
    """One image's ``report`` result from its sample (or the error that stopped it) and its map: evidence, the
    reasoner's explanation, the record and the overlay; any failure is recorded."""
    from vlm_ad.viz import png_bytes

    t0 = time.perf_counter()
    try:
        if isinstance(sample, BaseException):
            raise sample
        explained = pipeline.explain_map(amap, sample.image)
        rec = explained.record(path=item.path, overlay=f"overlays/{item.stem}.png")
        png = png_bytes(explained.overlay())
    except Exception as exc:  # noqa: BLE001 - a batch records any per-image failure and goes on
        rec, png = Record.failed(item.image_id, item.path, exc), None
    rec.key = item.key
    return Computed(item, rec.to_json(), png, seconds + time.perf_counter() - t0)


def _decode(item: WorkItem, image_id: str, prepare: Callable[[Any], Any] | None) -> tuple[Any, Any]:
    """(Sample, prepared network input or None), or (the exception, None) when the image cannot be read."""
    from vlm_ad.data import load_image
    from vlm_ad.pipeline import check_measurable
    from vlm_ad.types import Sample

    try:
        sample = check_measurable(Sample(load_image(item.file), image_id, path=Path(item.path)))
        return sample, (prepare(sample.image) if prepare is not None else None)
    except Exception as exc:  # noqa: BLE001 - handed to the task, which records it as the per-image path would
        return exc, None


def _predict(pipeline: Pipeline, decoded: list[tuple[Any, Any]]) -> list[Any]:
    """The detector's maps of the decoded samples of a batch in one call (None for the unreadable ones)."""
    ok = [i for i, (s, _) in enumerate(decoded) if not isinstance(s, BaseException)]
    out: list[Any] = [None] * len(decoded)
    if not ok:
        return out
    samples = [decoded[i][0] for i in ok]
    inputs = [decoded[i][1] for i in ok]
    det = pipeline.detector
    if getattr(det, "name", None) not in BATCH_INVARIANT:  # e.g. mutual scores the images of a call against each other
        maps = [det.predict([s])[0] for s in samples]
    elif inputs[0] is not None:
        maps = det.predict(samples, inputs=inputs)
    else:
        maps = det.predict(samples)
    for i, amap in zip(ok, maps):
        out[i] = amap
    return out


def detect_batch(pipeline: Pipeline, items: Sequence[WorkItem], decoded: list[tuple[Any, Any]],
                 pool: ThreadPoolExecutor) -> list[Future]:
    """``vlm-ad detect``'s step for a batch (:func:`detect_item` for each image, the detector called once): futures of
    the :class:`Computed` results in input order; overlays and PNGs are made in ``pool``."""
    from vlm_ad.errors import VlmAdError

    t0 = time.perf_counter()
    try:
        maps = _predict(pipeline, decoded)
    except VlmAdError:  # one bad image fails the batch call: each image alone, as the one-at-a-time path (in this
        return [_done(detect_item(pipeline, item)) for item in items]  # thread: a runtime's session is not shared)
    share = (time.perf_counter() - t0) / len(items)
    return [pool.submit(_detect_result, item, s, amap, share) for item, (s, _), amap in zip(items, decoded, maps)]


def explain_batch(pipeline: Pipeline, items: Sequence[WorkItem], decoded: list[tuple[Any, Any]],
                  pool: ThreadPoolExecutor) -> list[Future]:
    """``vlm-ad report``'s step for a batch (:func:`explain_item` for each image, the detector called once). The
    reasoner runs here, in order (an LLM client need not be thread-safe); any per-image failure is recorded."""
    t0 = time.perf_counter()
    try:
        maps = _predict(pipeline, decoded)
    except Exception:  # noqa: BLE001 - each image alone then records its own failure, as explain_item does
        return [_done(explain_item(pipeline, item)) for item in items]
    share = (time.perf_counter() - t0) / len(items)
    return [_done(_explain_result(pipeline, item, s, amap, share)) for item, (s, _), amap in zip(items, decoded, maps)]


def _done(result: Computed) -> Future:
    fut: Future = Future()
    fut.set_result(result)
    return fut


Task = Callable[[Pipeline, WorkItem], Computed]
BatchTask = Callable[[Pipeline, Sequence[WorkItem], list, ThreadPoolExecutor], list[Future]]
# each per-image task's batched form, and how it names an image (detect: the file name; report: the id)
_BATCHED: dict[Any, tuple[BatchTask, Callable[[WorkItem], str]]] = {
    detect_item: (detect_batch, lambda item: Path(item.path).name),
    explain_item: (explain_batch, lambda item: item.image_id),
}


class Engine(Protocol):
    """Computes one task over many images and yields each result once, in any order."""

    name: str

    def map(self, task: Task, items: Sequence[WorkItem]) -> Iterator[Computed]: ...

    def close(self) -> None: ...


class LocalEngine:
    """This process: one image after the other (``batch_size=1``), or pipelined batches of ``batch_size`` images
    with ``workers`` threads decoding ahead (two batches) and writing overlays behind (see the module docstring)."""

    name = "local"

    def __init__(self, pipeline: Pipeline, *, batch_size: int = 1, workers: int = 2) -> None:
        if batch_size < 1 or workers < 1:
            raise ConfigError(f"batch_size and workers must be at least 1, got {batch_size} and {workers}")
        self.pipeline, self.batch_size, self.workers = pipeline, batch_size, workers

    def map(self, task: Task, items: Sequence[WorkItem]) -> Iterator[Computed]:
        if self.batch_size == 1 or task not in _BATCHED:
            for item in items:
                yield task(self.pipeline, item)
            return
        yield from self._pipelined(*_BATCHED[task], list(items))

    def _pipelined(self, step: BatchTask, image_id: Callable[[WorkItem], str], items: list[WorkItem]
                   ) -> Iterator[Computed]:
        prepare = getattr(self.pipeline.detector, "prepare", None)  # an exported runtime resizes in the pool too
        batches = deque(items[i : i + self.batch_size] for i in range(0, len(items), self.batch_size))
        with ThreadPoolExecutor(self.workers, thread_name_prefix="vlm-ad-io") as pool:
            ahead: deque = deque()
            behind: deque[Future] = deque()

            def read_ahead() -> None:  # decoding of the next two batches runs while this one is computed
                while batches and len(ahead) < 2:
                    batch = batches.popleft()
                    ahead.append((batch, [pool.submit(_decode, it, image_id(it), prepare) for it in batch]))

            read_ahead()
            while ahead:
                batch, futures = ahead.popleft()
                read_ahead()
                decoded = [f.result() for f in futures]
                while behind and behind[0].done():
                    yield behind.popleft().result()
                behind.extend(step(self.pipeline, batch, decoded, pool))
            while behind:
                yield behind.popleft().result()

    def close(self) -> None:
        pass


# ------------------------------------------------------------------------------------------------------------ Ray
class _Worker:
    """A Ray actor: builds the pipeline once, then runs the task on batches."""

    def __init__(self, spec: PipelineSpec, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)  # one actor per CPU: no oversubscription
        self.pipeline = spec.build(threads)

    def run(self, task: Task, items: list[WorkItem]) -> list[Computed]:
        """The task's results for a batch: one detector call for the batch (its batched form), or image by image."""
        if len(items) == 1 or task not in _BATCHED:
            return [task(self.pipeline, item) for item in items]
        step, image_id = _BATCHED[task]
        prepare = getattr(self.pipeline.detector, "prepare", None)
        with ThreadPoolExecutor(2, thread_name_prefix="vlm-ad-io") as pool:  # decodes, and makes overlays
            decoded = list(pool.map(lambda it: _decode(it, image_id(it), prepare), items))
            return [f.result() for f in step(self.pipeline, items, decoded, pool)]

    def pid(self) -> int:
        return os.getpid()


def _ray():
    from vlm_ad._deps import require

    return require("ray", "--engine ray")


def _check_address(address: str) -> None:
    """Fail fast (2 s) with a clear message when a host:port address cannot be reached."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # 'auto' and other forms: Ray itself says what is wrong
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except OSError as exc:
        raise ConfigError(f"cannot reach a Ray cluster at --address {address} ({exc}); start one there with "
                          "'ray start --head' (it prints the address to use), or leave out --address to start a "
                          "local cluster") from None


def start_local_cluster(num_cpus: int, **kwargs: Any) -> Any:
    """Start a Ray cluster on this machine for this process (``kwargs`` go to ``ray.init``); returns ``ray``.
    Its workers import the same vlm_ad as this process, even when another copy is installed."""
    import vlm_ad

    ray = _ray()
    pkg_parent = str(Path(vlm_ad.__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (pkg_parent, os.environ.get("PYTHONPATH")) if p)
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
             runtime_env={"env_vars": {"PYTHONPATH": path}}, **kwargs)
    return ray


@dataclass
class RayEngine:
    """Ray actors, one per worker, each loading the model once (:class:`PipelineSpec`).

    Args:
        spec: how every worker builds the pipeline.
        address: join this cluster (``ray start --head`` prints it; ``auto`` finds one on this machine); None starts
            a local cluster for this run and stops it at :meth:`close`.
        workers: actors to start (default: the cluster's CPUs).
        batch_size: images per call to a worker.
        cpus_per_worker: CPUs each actor reserves (and torch threads it uses).
    """

    spec: PipelineSpec
    address: str | None = None
    workers: int | None = None
    batch_size: int = 4
    cpus_per_worker: int = 1
    name: str = "ray"
    actors: list[Any] = field(default_factory=list, repr=False)
    lost_batches: int = 0  # batches whose worker died under them (each was queued again or recorded as failed)
    _started: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"workers must be at least 1, got {self.workers}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {self.batch_size}")

    def start(self) -> Any:
        """Connect to (or start) the cluster and start the actors; returns the ``ray`` module."""
        ray = _ray()
        if not ray.is_initialized():
            self._init(ray)
        if not self.actors:
            n = self.workers or max(1, int(ray.cluster_resources().get("CPU", 1)) // self.cpus_per_worker)
            self.actors = [self._actor(ray) for _ in range(n)]
        return ray

    def _init(self, ray: Any) -> None:
        if self.address is None:
            start_local_cluster((self.workers or os.cpu_count() or 1) * self.cpus_per_worker)
        else:
            _check_address(self.address)
            try:
                ray.init(address=self.address, log_to_driver=False, logging_level=logging.WARNING)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ConfigError(f"cannot join the Ray cluster at --address {self.address}: {exc}. Start one with "
                                  "'ray start --head' and pass the address it prints, or leave out --address") from None
        self._started = True

    def _actor(self, ray: Any) -> Any:
        cls = ray.remote(num_cpus=self.cpus_per_worker, max_restarts=0)(_Worker)
        return cls.remote(self.spec, self.cpus_per_worker)

    def map(self, task: Task, items: Sequence[WorkItem]) -> Iterator[Computed]:
        ray = self.start()
        from ray.exceptions import RayActorError

        todo = deque((list(items[i:i + self.batch_size]), 0) for i in range(0, len(items), self.batch_size))
        inflight: dict[Any, tuple[Any, list[WorkItem], int, int]] = {}  # ref -> (actor, batch, tries, order sent)
        sent = itertools.count()

        def refill() -> None:  # two batches per worker: the next one waits while one returns
            while todo and len(inflight) < 2 * len(self.actors):
                busy = [a for a, _, _, _ in inflight.values()]
                actor = min(self.actors, key=busy.count)
                batch, tries = todo.popleft()
                inflight[actor.run.remote(task, batch)] = (actor, batch, tries, next(sent))

        refill()
        while inflight:
            [ref], _ = ray.wait(list(inflight), num_returns=1)
            actor, batch, tries, order = inflight.pop(ref)
            try:
                results = ray.get(ref)
            except RayActorError as exc:
                # an actor runs its batches in the order they were sent: the earliest one of the dead worker was
                # running and counts a try; the ones queued behind it go back unharmed (an image queued behind one
                # that kills its worker must not fail with it)
                behind = [r for r, (a, _, _, _) in inflight.items() if a is actor]
                mine = sorted([(order, batch, tries)] + [(o, b, t) for _, b, t, o in map(inflight.pop, behind)],
                              key=lambda m: m[0])
                for _, queued, queued_tries in reversed(mine[1:]):
                    todo.appendleft((queued, queued_tries))
                results = self._lost(ray, actor, mine[0][1], mine[0][2], exc, todo)
            yield from results
            refill()

    def _lost(self, ray: Any, actor: Any, batch: list[WorkItem], tries: int, exc: Exception, todo: deque
              ) -> list[Computed]:
        """A worker died with ``batch``: replace it and queue the batch again, or record its images as failed."""
        self.lost_batches += 1
        if actor in self.actors:
            self.actors[self.actors.index(actor)] = self._actor(ray)
        if tries + 1 < _MAX_TRIES:
            todo.appendleft((batch, tries + 1))
            return []
        if len(batch) > 1:  # one image may be killing its worker: one more try each, alone, spares the others
            todo.extendleft(([item], _MAX_TRIES - 1) for item in reversed(batch))
            return []
        reason = RuntimeError(f"the Ray worker running this image died {_MAX_TRIES} times ({str(exc)[:200]}); "
                              "rerun the same command to retry it")
        out = []
        for item in batch:
            rec = Record.failed(item.image_id, item.path, reason)
            rec.key = item.key
            out.append(Computed(item, rec.to_json()))
        return out

    def close(self) -> None:
        if not self.actors and not self._started:
            return
        ray = _ray()
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
        if self._started:
            ray.shutdown()
            self._started = False


def create_engine(name: str, pipeline: Pipeline, spec: PipelineSpec | None = None, *, address: str | None = None,
                  workers: int | None = None, batch_size: int = 1) -> Engine:
    """``local`` (this process, ``pipeline``; ``batch_size`` > 1 pipelines batches) or ``ray`` (actors building
    ``spec``, ``batch_size`` images per call and per detector call; ``address`` to join a cluster)."""
    if name == "local":
        if address is not None:
            raise ConfigError("--address is for --engine ray; add --engine ray or leave out --address")
        return LocalEngine(pipeline, batch_size=batch_size)
    if name == "ray":
        if spec is None:
            raise ConfigError("--engine ray needs a model folder every worker can load (--model)")
        _ray()
        if address is not None:
            _check_address(address)  # before anything is written
        return RayEngine(spec, address=address, workers=workers, batch_size=batch_size)
    raise ConfigError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}")
