"""Plate reading on several cores: a small pool of readers, results handed on in lane order.

The pipeline thread captures a weighing's frames itself, in the order the vehicles left the
scale (cameras hand each push or replayed photo out once, so the order of captures matters),
and submits the frames of its front and rear cameras here. Each worker thread owns one
:class:`~drivers.plate.base.PlateReader` (a model instance: a reader's interpreters are not
re-entrant, so one reader serves one frame at a time); a frame goes to whichever worker is free.
The runtimes (ONNX Runtime's ``run``, LiteRT's ``invoke``) and OpenCV release the GIL, so plain
threads use the cores (``scripts/bench/plate-readers``).

Reads finish in any order; :meth:`ReaderPool.take_completed` hands jobs on **per lane in the
order they were submitted**: a lane's later vehicle waits for its earlier one, other lanes do
not wait. That keeps the records of one lane sealed in the order their vehicles left the scale.

A reader that hangs must not hold the station's evidence back for ever, nor lose it:

* a frame a worker has been reading for ``stuck_after_s`` is given up: the job goes on with the
  reads it has and a fault naming the reader (the record is then flagged ``no_plate`` when it
  has no other plate; a late answer of that worker is dropped);
* when no worker started or finished a frame for ``stuck_after_s`` while frames wait (every
  reader hangs), the waiting jobs are given up the same way;
* the hung worker's stage stops beating (``busy_for``): the watchdog's rules apply (systemd
  restarts the daemon), while the other lanes' records keep being sealed until then.

::

    pool = ReaderPool(readers, wake=event.set)
    threads: pool.run_worker(i) for each reader
    job = pool.submit(lane, weighing, capture, clips)      # after capture_frames(...)
    for job in pool.take_completed(): assembler.add_weighing(job.weighing); ...
    pool.close()                                            # the workers end
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

from agent.domain import Clip, Frame, PlateRead, VehicleWeighing
from agent.pipeline.capture import TriggerResult, plate_frames
from drivers.plate.base import PlateReader, PlateReaderError

log = logging.getLogger(__name__)

#: the most readers ``plate_readers = 0`` picks (each is a model instance in memory)
AUTO_MAX_READERS = 4


class PipelineConfig(BaseModel):
    """``[pipeline]``: how the station's pipeline uses the machine's cores."""

    model_config = ConfigDict(extra="forbid")

    plate_readers: int = Field(
        default=0,
        ge=0,
        le=16,
        description="plate readers working in parallel, each with its own model instance in "
        "memory (each extra one about 30 MB RSS with the ONNX models, 70 MB with the LiteRT "
        "bundle and the ONNX second opinion, see docs/plates.md); 0: one per CPU core, at most "
        "4 (a Raspberry Pi 4 or 5: 4). Records "
        "of a lane are sealed in the order their vehicles left the scale whatever the count",
    )


def reader_count(config: PipelineConfig, cpu_count: int | None = None) -> int:
    """How many readers to open: the configured count, else one per core up to
    :data:`AUTO_MAX_READERS` (``cpu_count`` defaults to :func:`os.cpu_count`)."""
    if config.plate_readers:
        return config.plate_readers
    cores = cpu_count if cpu_count is not None else (os.cpu_count() or 1)
    return max(1, min(AUTO_MAX_READERS, cores))


@dataclass(eq=False)
class ReadJob:
    """One weighing's frames being read; ``capture.reads`` is filled once it is complete."""

    lane: int
    weighing: VehicleWeighing
    capture: TriggerResult
    clips: tuple[Clip, ...] = ()
    #: per submitted frame: its reads once read (``None`` while not yet)
    results: list[list[PlateRead] | None] = field(default_factory=list)
    left: int = 0
    given_up: bool = False
    submitted_mono: float = 0.0

    @property
    def done(self) -> bool:
        return self.left == 0 or self.given_up


@dataclass(eq=False)
class _Task:
    job: ReadJob
    index: int
    frame: Frame


@dataclass
class _Worker:
    name: str
    reader: PlateReader
    task: _Task | None = None
    busy_since: float = 0.0


class ReaderPool:
    """``readers`` on worker threads (the caller runs :meth:`run_worker` for each index);
    none: jobs complete without reads (records flagged ``no_plate``).

    ``wake`` is called whenever a job may have completed (the pipeline's event); ``beat`` with
    ``(worker name, idle)`` at each frame's start and end; ``monotonic`` is the clock the
    ``stuck_after_s`` rules are measured with.
    """

    def __init__(
        self,
        readers: Sequence[PlateReader],
        *,
        wake: Callable[[], None] = lambda: None,
        beat: Callable[[str, bool], None] = lambda name, idle: None,
        stuck_after_s: float = 10.0,
        monotonic: Callable[[], float] = time.monotonic,
        name: str = "plate-reader",
    ) -> None:
        self.workers = [_Worker(f"{name}-{i + 1}", r) for i, r in enumerate(readers)]
        self._tasks: queue.Queue[_Task | None] = queue.Queue()
        self._lock = threading.Lock()
        self._lanes: dict[int, deque[ReadJob]] = {}
        self._wake = wake
        self._beat = beat
        self._monotonic = monotonic
        self.stuck_after_s = stuck_after_s
        self._progress = monotonic()  # when a worker last started or finished a frame

    @property
    def names(self) -> list[str]:
        return [w.name for w in self.workers]

    @property
    def in_flight(self) -> int:
        """Jobs submitted and not yet taken by :meth:`take_completed`."""
        with self._lock:
            return sum(len(jobs) for jobs in self._lanes.values())

    # -- the pipeline's side ---------------------------------------------------------------------

    def submit(
        self,
        lane: int,
        weighing: VehicleWeighing,
        capture: TriggerResult,
        clips: Sequence[Clip] = (),
    ) -> ReadJob:
        """Queue the plate frames of ``capture`` (front and rear cameras) for reading (a pool
        without readers, as when the model is missing, completes the job unread at once)."""
        frames = plate_frames(capture.frames) if self.workers else []
        job = ReadJob(
            lane,
            weighing,
            capture,
            tuple(clips),
            [None] * len(frames),
            len(frames),
            submitted_mono=self._monotonic(),
        )
        with self._lock:
            if not self._waiting():
                self._progress = job.submitted_mono  # an idle pool is not a stalled one
            self._lanes.setdefault(lane, deque()).append(job)
        for i, frame in enumerate(frames):
            self._tasks.put(_Task(job, i, frame))
        if not frames:
            self._wake()
        return job

    def take_completed(self) -> list[ReadJob]:
        """The jobs whose reads are complete (or given up), each lane's in submission order:
        a lane's job waits for the lane's earlier ones; ``capture.reads`` is filled in."""
        self._give_up_stuck()
        out: list[ReadJob] = []
        with self._lock:
            for jobs in self._lanes.values():
                while jobs and jobs[0].done:
                    job = jobs.popleft()
                    job.capture.reads = [r for reads in job.results if reads for r in reads]
                    out.append(job)
        return out

    def next_check_s(self) -> float | None:
        """Seconds until a stuck rule may give a job up (``None``: nothing in flight)."""
        now = self._monotonic()
        with self._lock:
            if not any(self._lanes.values()):
                return None
            starts = [w.busy_since for w in self.workers if w.task is not None]
            if self._waiting():
                starts.append(self._progress)
        if not starts:
            return self.stuck_after_s
        return max(0.0, min(starts) + self.stuck_after_s - now)

    def busy_for(self) -> dict[str, float | None]:
        """Each worker's seconds on its current frame (``None``: idle), for the watchdog."""
        now = self._monotonic()
        with self._lock:
            return {w.name: (now - w.busy_since) if w.task else None for w in self.workers}

    def close(self) -> None:
        """End the workers once they finish their current frame (the pipeline has drained)."""
        for _ in self.workers:
            self._tasks.put(None)

    # -- the workers ----------------------------------------------------------------------------

    def run_worker(self, index: int) -> None:
        """Worker ``index``'s loop (a thread of its own) until :meth:`close`."""
        worker = self.workers[index]
        while True:
            self._beat(worker.name, True)
            task = self._tasks.get()  # an event wait: no poll while idle
            if task is None:
                return
            with self._lock:
                if task.job.given_up:
                    continue
                worker.task = task
                worker.busy_since = self._progress = self._monotonic()
            self._beat(worker.name, False)
            reads, fault = self._read(worker, task.frame)
            with self._lock:
                worker.task = None
                self._progress = self._monotonic()
                job = task.job
                if job.given_up:
                    continue  # given up while we read: too late for this record
                job.results[task.index] = reads
                if fault:
                    job.capture.faults.append(fault)
                job.left -= 1
                finished = job.left == 0
            if finished:
                self._wake()

    @staticmethod
    def _read(worker: _Worker, frame: Frame) -> tuple[list[PlateRead], str]:
        """One frame's reads; a reader fault costs this frame's reads, never the worker."""
        try:
            return worker.reader.read(frame), ""
        except PlateReaderError as err:
            log.warning("%s", err)
            return [], str(err)
        except Exception as err:
            log.exception("%s: frame of camera %s failed", worker.name, frame.camera_id)
            return [], f"{worker.name}: frame of camera {frame.camera_id}: {err!r}"

    # -- the stuck rules ------------------------------------------------------------------------

    def _waiting(self) -> bool:
        """Whether frames wait for a free worker (the lock is held)."""
        running = sum(1 for w in self.workers if w.task is not None and not w.task.job.given_up)
        unread = sum(
            sum(1 for r in job.results if r is None)
            for jobs in self._lanes.values()
            for job in jobs
            if not job.given_up
        )
        return unread > running

    def _give_up_stuck(self) -> None:
        """Apply the two stuck rules (module docstring); each given-up job says why."""
        now = self._monotonic()
        with self._lock:
            faults = [
                (
                    w.task.job,
                    f"{w.name} stuck for {now - w.busy_since:.0f} s on a frame of camera "
                    f"{w.task.frame.camera_id}: its plates not read for this vehicle",
                )
                for w in self.workers
                if w.task is not None and now - w.busy_since >= self.stuck_after_s
            ]
            if self._waiting() and now - self._progress >= self.stuck_after_s:
                faults += [
                    (
                        job,
                        f"no plate reader free for {now - self._progress:.0f} s (all "
                        f"{len(self.workers)} busy or hung): plates of this vehicle not read",
                    )
                    for jobs in self._lanes.values()
                    for job in jobs
                ]
            given_up = []
            for job, fault in faults:
                if not job.done:
                    job.given_up = True
                    job.capture.faults.append(fault)
                    given_up.append((job, fault))
        for job, fault in given_up:
            log.error(
                "lane %d vehicle at %s: %s", job.lane, job.weighing.measured_at.isoformat(), fault
            )
