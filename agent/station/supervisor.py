"""The station: every stage wired together under one supervisor.

Start-up order (and reverse shut-down) in one readable place, :meth:`Station.start`:

1. database, signing key, evidence store (stray files from a crash removed);
2. legal rules, permits, the vehicle registry, the audit of the legally relevant parameters,
   clock monitoring, retention; the plate reader (a missing model degrades to "no plate" records);
3. uplink (MQTT; records wait in the outbox while the broker is unreachable), with the
   station's command handlers (:mod:`agent.station.handlers`);
4. per lane: cameras, then the scale and its reader thread;
5. the pipeline thread: weighing → frames and plates → verdict → evidence → uplink; the status
   thread (:mod:`agent.station.health`); the retention thread.

Threads share one stop event (``while not stop.wait(n)``), queues are bounded, and every loop
iteration is guarded: an exception is logged with the device it concerns and the loop goes on.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import queue
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from agent import __version__, legalid
from agent.config import Lane, StationConfig
from agent.domain import Clip, VehicleClass, VehicleEvent, VehicleWeighing, WeighingFlag
from agent.legal import DeviceFacts, InvalidFactsError, VehicleFacts, judge, load_rules
from agent.pipeline.assemble import Assembler
from agent.pipeline.capture import capture_clips, capture_frames
from agent.pipeline.composite import with_composite
from agent.pipeline.reading import ReaderPool, ReadJob, reader_count
from agent.pipeline.weighing import WeighingStage
from agent.provenance import metrology_facts, metrology_keys, site_facts
from agent.station import health, sdnotify, timesync
from agent.station.handlers import StationCommands
from agent.station.health import Counters, StageBeat
from agent.store import audit, chainhead, keys, readonly, retention
from agent.store.alarms import raise_alarm
from agent.store.completeness import Expected
from agent.store.db import AUTO_VACUUM_INCREMENTAL, Database, DatabaseError
from agent.store.evidence import DiskFullError, EvidenceError, EvidenceStore, upgrade_pending
from agent.store.permits import PermitBook
from agent.store.record import RecordContext, StoredRecord
from agent.store.reserve import DiskReserve
from agent.store.vehicles import VehicleRegistry
from agent.uplink.delivery import Uplink
from drivers.camera import CAMERAS, Camera
from drivers.clock import Clock, SystemClock
from drivers.plate import PlateReader
from drivers.plate.model import open_plate_reader
from drivers.scale import SCALES, Scale, ScaleError

log = logging.getLogger(__name__)

QUEUE_SIZE = 256
#: weighings captured and being read at most (their frames are in memory); beyond it the
#: pipeline takes no new weighing and the queue above fills
READS_IN_FLIGHT = 32
#: longest wait of the pipeline thread while a vehicle is being assembled: its matching
#: window closes on the station's clock, which a step may move
PIPELINE_TICK_S = 1.0
STAGE_STALE_S = 10.0  # a stage silent this long is hung: the watchdog stops pinging
BLOCKED_RETRY_S = 2.0  # a blocked stage retries (and beats) this often, well within the above
START_FREE_BYTES = 1024 * 1024  # less free at start: release a step of the reserve first
MB = 1024 * 1024


class Station:
    """The running station: ``start()``, then ``wait()`` and ``stop()`` (``roadside-agent run``)."""

    def __init__(
        self,
        config: StationConfig,
        data_dir: Path | None = None,
        clock: Clock | None = None,
        on_stored: Callable[[StoredRecord], None] | None = None,
        notifier: sdnotify.Notifier | None = None,
    ) -> None:
        self.config = config
        self.data_dir = config.data_dir(data_dir)
        self.clock: Clock = clock or SystemClock(timedelta(hours=config.station.utc_offset_hours))
        self.stop_event = threading.Event()
        #: set by :meth:`stop` once the scale threads have ended (they hand over the vehicles
        #: they close at shutdown): the pipeline's signal to finish
        self._producers_done = threading.Event()
        self.dump_requested = threading.Event()  # SIGUSR1: write diag/ dumps
        self.notifier = notifier or sdnotify.Notifier.from_environment()
        self.watchdog = sdnotify.Watchdog(self.notifier)
        self.on_stored = on_stored
        self.counters = Counters()
        self.started_mono = self.clock.monotonic()
        self._threads: list[threading.Thread] = []
        self._work: queue.Queue[tuple[Lane, VehicleWeighing]] = queue.Queue(QUEUE_SIZE)
        #: set when the pipeline has something to do: a weighing queued, a read done, stop
        self._wake = threading.Event()
        self.reading = ReaderPool([])
        #: measured_at of the weighings in the assembler, and when the last reads it got
        #: stop being claimable (the pipeline's next wake-up)
        self._assembling: list[datetime] = []
        self._reads_until: datetime | None = None
        self.scales: dict[int, Scale] = {}
        self.cameras: dict[int, list[Camera]] = {}
        self.plate_reader: PlateReader | None = None
        self.assembler = Assembler(config.assemble)
        self.plate_error = ""
        #: the clips captured with each weighing, by (lane, measured_at), until it is stored
        self._clips: dict[tuple[int, datetime], tuple[Clip, ...]] = {}
        self.beats: dict[str, StageBeat] = {}
        self.recent: list[dict[str, Any]] = []  # the last vehicles stored, newest first
        self.db: Database | None = None
        self.store: EvidenceStore | None = None
        self.uplink: Uplink | None = None
        self._tick_failures: set[str] = set()
        self.status_file = health.StatusFile(self.data_dir / health.STATUS_FILE)
        self._pending_alarms: list[tuple[str, str, dict[str, Any]]] = []
        #: set-config was applied: ``run`` exits 75 so systemd starts us on the new file
        self.restart_requested = False

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Start every part in order; :meth:`stop` stops them in reverse."""
        cfg = self.config
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # 1. the evidence store
        db, store = self._open_store()
        # 2. what judges and seals a vehicle, and what watches over it
        self.rules = load_rules(cfg.legal)
        self.permits = PermitBook(self.data_dir)
        self.vehicles = VehicleRegistry(self.data_dir)
        self.legal_id = legalid.legal_software_id()
        self._audit_legal_parameters(db)
        self.clock_monitor = timesync.ClockMonitor(
            timesync.clock_synchronized,
            alarm=timesync.outbox_alarm(db, cfg.station.id),
            clock=self.clock,
            step_alarm=timesync.outbox_alarm(db, cfg.station.id, "clock_step"),
            simulated=all(lane.scale.type == "simulated" for lane in cfg.lanes),
        )
        self.clock_monitor.poll(self.clock.now())
        self.retention = retention.Retention(
            db, store, cfg.evidence, self.clock, station_id=cfg.station.id
        )
        self._start_plate_reader()
        # 3. the uplink with the station's command handlers
        self._start_uplink()
        # 4. the lanes: cameras, scales and their reader threads
        for lane in cfg.lanes:
            self._start_lane(lane)
        # 5. the stages that consume them
        for i, name in enumerate(self.reading.names):
            self._spawn(name, functools.partial(self.reading.run_worker, i))
        self._spawn("pipeline", self._pipeline_loop)
        self._spawn("status", self._status_loop)
        self._spawn("retention", lambda: self.retention.run(self.stop_event), watched=False)
        log.info(
            "station %s started: %d lane(s), data in %s, broker %s:%d",
            cfg.station.id,
            len(cfg.lanes),
            self.data_dir,
            cfg.uplink.host,
            cfg.uplink.port,
        )

    def _open_store(self) -> tuple[Database, EvidenceStore]:
        """Database, signing key, evidence store; stray files of a crash are removed."""
        self.db = db = self._open_database()
        if db.auto_vacuum() != AUTO_VACUUM_INCREMENTAL:
            # a one-off VACUUM (docs/evidence.md): ask systemd for the time it may take
            self.notifier.extend_timeout(600, "converting the database to incremental vacuum")
            db.enable_incremental_vacuum(shutil.disk_usage(self.data_dir).free)
        else:
            db.enable_incremental_vacuum(0)  # records the migration on a new database
        self.signer = keys.load_signer(self.config.evidence, self.data_dir, create_if_missing=True)
        if upgrade_pending(db):  # new indexes over a year of records (docs/evidence.md)
            self.notifier.extend_timeout(600, "upgrading the evidence database")
        self.store = store = EvidenceStore(db, self.data_dir, self.signer)
        store.reserve = self.reserve
        store.clip_max_bytes = int(self.config.evidence.clip_max_mb * 1024 * 1024)
        removed = store.recover()
        if removed:
            log.warning("evidence: cleaned %d stray file(s) after an interrupted run", removed)
        return db, store

    def _open_database(self) -> Database:
        """The station database, also on a full disk: the reserve gives SQLite room to open
        it (WAL and shared-memory files) and to commit, step by step."""
        self.reserve = DiskReserve(self.data_dir, self.config.evidence.db_reserve_mb * MB)
        if shutil.disk_usage(self.data_dir).free < START_FREE_BYTES:
            log.error("evidence: starting on a full disk (%s)", self.data_dir)
            self.reserve.release()
        while True:
            try:
                return Database(self.data_dir / "station.db")
            except DatabaseError as err:
                if "full" not in str(err) or not self.reserve.release():
                    raise

    def _audit_legal_parameters(self, db: Database) -> None:
        """Record the legally relevant parameters; alarm on each change since the last run."""
        self.audit = audit.AuditLog(db, self.signer)
        first_run = self.audit.counter() == 0
        changes = self.audit.reconcile(self._legal_parameters(), self.clock.now())
        if first_run and changes:
            log.info(
                "audit: initial legally relevant parameters recorded (%d entries)", len(changes)
            )
        for change in [] if first_run else changes:
            log.warning(
                "audit: %s changed from %r to %r (event counter %d)",
                change.key,
                change.old,
                change.new,
                change.counter,
            )
            self._alarm(
                "parameter_change",
                f"legally relevant parameter {change.key} changed",
                {
                    "key": change.key,
                    "old": change.old,
                    "new": change.new,
                    "audit_counter": change.counter,
                },
            )

    def _legal_parameters(self) -> dict[str, Any]:
        """What the audit log keeps under change control (WELMEC 7.2 style)."""
        lanes = {f"lane{lane.number}": lane for lane in self.config.lanes}
        return {
            "limits": {"rules_version": self.rules.version},
            "tolerance": self.config.legal.model_dump(mode="json"),
            "scale": {
                name: lane.scale.model_dump(
                    mode="json",
                    exclude={"certificate", "certificate_valid_until", *metrology_keys()},
                )
                for name, lane in lanes.items()
            },
            "calibration": {
                name: {
                    "accuracy_class": lane.scale.accuracy_class,
                    "certificate": lane.scale.certificate,
                    "certificate_valid_until": (
                        lane.scale.certificate_valid_until.isoformat()
                        if lane.scale.certificate_valid_until
                        else None
                    ),
                }
                for name, lane in lanes.items()
            },
            "software": {"version": __version__, "legal_id": self.legal_id},
            # DESIGN §4a: where and with which verified device; what a chargeable record needs
            # (unknown facts are left out: an upgrade that adds the keys logs no null changes;
            # a fact later removed is logged as removed)
            "site": _known(site_facts(self.config.station.site)),
            "metrology": {
                name: _known(metrology_facts(lane.scale)) for name, lane in lanes.items()
            },
            "evidence": {"required": list(self.config.evidence.required)},
        }

    def _alarm(self, kind: str, message: str, details: dict[str, Any]) -> None:
        """Queue an alarm for the platform (it survives restarts in the outbox)."""
        assert self.db is not None
        with self.db.write() as conn:
            raise_alarm(
                conn,
                station_id=self.config.station.id,
                kind=kind,
                at=self.clock.now(),
                message=message,
                details=details,
            )
        if self.uplink is not None:
            self.uplink.wake()

    def _start_plate_reader(self) -> None:
        """The plate readers of the pool (agent.pipeline.reading): each its own model."""
        # A missing or refused model degrades to records flagged "no plate" (logged at ERROR).
        self.plate_reader = open_plate_reader(self.config.plate)
        if self.plate_reader is None:
            self.plate_error = f"plate reader {self.config.plate.type!r} not available"
            return
        readers = [self.plate_reader]
        wanted = reader_count(self.config.pipeline)
        while len(readers) < wanted:
            extra = open_plate_reader(self.config.plate)
            if extra is None:
                break  # logged; the readers that loaded do the work
            readers.append(extra)
        log.info("plate reading: %d reader(s) of type %s", len(readers), self.config.plate.type)
        self.reading = ReaderPool(
            readers,
            wake=self._wake.set,
            beat=self._reader_beat,
            stuck_after_s=STAGE_STALE_S,
            monotonic=self.clock.monotonic,
        )

    def _reader_beat(self, name: str, idle: bool) -> None:
        beat = self.beats.get(name)
        if beat is not None:
            beat.last = self.clock.monotonic()
            beat.idle = idle

    def _start_uplink(self) -> None:
        assert self.db is not None and self.store is not None
        self.uplink = Uplink(
            self.config.uplink,
            station_id=self.config.station.id,
            db=self.db,
            store=self.store,
            clock=self.clock,
            health=self.health,
            handlers=StationCommands(
                self.config,
                self.clock,
                self.permits,
                self.cameras,
                self.plate_reader,
                restart=self._restart_for_new_config,
                vehicles=self.vehicles,
                audit=self.audit,
            ).handlers(),
            # the signed chain head goes into the heartbeat and every ack receipt
            chain_head=functools.partial(chainhead.chain_head, self.db),
        )
        self.uplink.start()

    def _restart_for_new_config(self) -> None:
        """After set-config: stop, and ``run`` exits 75 so systemd restarts us on the new file."""
        log.warning("set-config: restarting to run with the new configuration")
        self.restart_requested = True
        self.stop_event.set()

    def _start_lane(self, lane: Lane) -> None:
        cams: list[Camera] = []
        for cam_cfg in lane.cameras:
            try:
                cam = CAMERAS.get(cam_cfg.type)(cam_cfg, self.clock, lane.number)
                start = getattr(cam, "start", None)
                if callable(start):
                    start()  # live cameras fill their ring buffer from now on
                cams.append(cam)
            except Exception as err:
                log.error("lane %d camera %s unavailable: %s", lane.number, cam_cfg.id, err)
        self.cameras[lane.number] = cams
        scale = SCALES.get(lane.scale.type)(lane.scale, self.clock, lane.number)
        self.scales[lane.number] = scale
        self._spawn(f"scale-lane{lane.number}", lambda: self._scale_loop(lane, scale))

    def _spawn(self, name: str, target: Callable[[], None], watched: bool = True) -> None:
        """Start a named stage thread; ``watched`` stages must beat for the watchdog."""
        if watched:
            self.beats[name] = StageBeat(name, self.clock.monotonic())
        t = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(t)
        t.start()

    def _blocked(self, name: str, reason: str, detail: str) -> None:
        """Stage ``name`` waits on something a restart does not fix: say so in STATUS= and
        raise ``stage_blocked`` once (best effort: the disk may take not even that yet)."""
        beat = self.beats.get(name)
        if beat is None or beat.blocked:
            return
        beat.blocked = reason
        beat.blocked_since = self.clock.now().isoformat(timespec="seconds")
        log.error("stage %s blocked: %s (%s); it keeps retrying", name, reason, detail)
        self._pending_alarms.append(
            (
                "stage_blocked",
                f"stage {name} blocked: {reason}: {detail}",
                {
                    "stage": name,
                    "reason": reason,
                    "since": beat.blocked_since,
                    "queued": self._work.qsize(),
                },
            )
        )
        self._send_pending_alarms()

    def _send_pending_alarms(self) -> None:
        """Queue the alarms a full disk refused so far (the status loop retries them)."""
        while self._pending_alarms:
            kind, message, details = self._pending_alarms[0]
            try:
                self._alarm(kind, message, details)
            except Exception as err:
                log.debug("%s alarm not queued yet: %s", kind, err)
                return
            self._pending_alarms.pop(0)

    def _unblocked(self, name: str) -> None:
        beat = self.beats.get(name)
        if beat is not None and beat.blocked:
            log.warning("stage %s runs again (was blocked: %s)", name, beat.blocked)
            beat.blocked = ""
            beat.blocked_since = ""
            self._send_pending_alarms()  # the disk takes them again

    def _beat(self, name: str) -> None:
        beat = self.beats.get(name)
        if beat is not None:
            beat.last = self.clock.monotonic()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop every stage in reverse order against one deadline. Idempotent."""
        if self.stop_event.is_set() and not self._threads:
            return
        self.stop_event.set()
        deadline = time.monotonic() + timeout_s
        # Producers first (scales close open vehicles), then the pipeline drains its queue,
        # then the rest, so nothing weighed is dropped on the way out.
        scale_threads = [t for t in self._threads if t.name.startswith("scale-")]
        for t in scale_threads:
            t.join(max(0.1, deadline - time.monotonic()))
        for scale in self.scales.values():
            scale.shutdown()
        self._producers_done.set()  # the pipeline drains what they handed over, then ends
        self._wake.set()
        for t in reversed(self._threads):
            t.join(max(0.1, deadline - time.monotonic()))
            if t.is_alive():
                log.error("stage %s did not stop in time", t.name)
        self._threads.clear()
        for cams in self.cameras.values():
            for cam in cams:
                cam.shutdown()
        if self.uplink is not None:
            self.uplink.stop(max(0.5, deadline - time.monotonic()))
        for worker in self.reading.workers:
            worker.reader.shutdown()
        if self.plate_reader is not None:
            self.plate_reader.shutdown()  # idempotent; also when the pool has none
        try:
            self.status_file.write(self, force=True)  # running: false
            self.dump_diag()
        except Exception:
            log.exception("final status/diag dump not written")
        if self.db is not None:
            self.db.close()
        log.info("station %s stopped", self.config.station.id)

    def wait(self, timeout_s: float | None = None) -> bool:
        return self.stop_event.wait(timeout_s)

    # -- stages -----------------------------------------------------------------------------

    def _scale_loop(self, lane: Lane, scale: Scale) -> None:
        """Read one lane's scale into its weighing stage until the station stops."""
        name = f"scale-lane{lane.number}"
        stage = WeighingStage(lane.number, lane.scale, lane.weighing)
        failing = False
        while not self.stop_event.is_set():
            self._beat(name)
            try:
                m = scale.recv(timeout_s=0.5)
            except ScaleError as err:
                if not failing:
                    log.error("lane %d scale %s: %s", lane.number, scale.id, err)
                else:
                    log.debug("lane %d scale %s: %s", lane.number, scale.id, err)
                failing = True
                self.stop_event.wait(1.0)
                continue
            except Exception:
                log.exception("lane %d scale %s: unexpected error", lane.number, scale.id)
                self.stop_event.wait(1.0)
                continue
            if failing and m is not None:
                log.warning("lane %d scale %s: reading again", lane.number, scale.id)
                failing = False
            try:
                done = stage.feed(m) if m is not None else stage.flush(self.clock.now())
            except Exception:
                log.exception("lane %d weighing: measurement %r not used", lane.number, m)
                continue
            for weighing in done:
                self._submit(lane, weighing)
        for weighing in stage.close_incomplete(
            "station stopped while the vehicle was on the scale"
        ):
            log.warning(
                "lane %d: vehicle on the scale at shutdown stored as incomplete", lane.number
            )
            self._submit(lane, weighing)

    def _submit(self, lane: Lane, weighing: VehicleWeighing) -> None:
        """Hand a vehicle to the pipeline; waits while the queue is full (never drops).

        Waiting, the lane's stage beats and says it is blocked (STATUS=): it is not hung, and
        a restart would only lose the queue."""
        name = f"scale-lane{lane.number}"
        waited = False
        while True:
            try:
                self._work.put((lane, weighing), timeout=0.5)
                self._wake.set()
                if waited:
                    self._unblocked(name)
                return
            except queue.Full:
                self._beat(name)
                if not waited:
                    waited = True
                    why = self.beats["pipeline"].blocked if "pipeline" in self.beats else ""
                    self._blocked(name, "pipeline queue full", why or "the pipeline is slow")
                log.error("pipeline queue full: lane %d waits", lane.number)
                if self.stop_event.is_set() and not self._pipeline_alive():
                    log.error(
                        "lane %d: vehicle at %s LOST: pipeline stopped",
                        lane.number,
                        weighing.measured_at.isoformat(),
                    )
                    return

    def _pipeline_alive(self) -> bool:
        return any(t.name == "pipeline" and t.is_alive() for t in self._threads)

    def _pipeline_loop(self) -> None:
        """Weighings in; photos captured for each and their plates read on the reader pool;
        events out once assembled, each lane's in the order its vehicles left the scale.

        Waits on one event (a weighing queued, a read done, stop) or the next matching window
        to close: an idle pipeline does not wake up (its stage counts as fresh while idle)."""
        lanes = {lane.number: lane for lane in self.config.lanes}
        # Not stop_event: the scales close their open vehicles after it is set, and those must
        # still be stored; the pipeline runs until every producer has ended, the queue is empty
        # and every read is in.
        while True:
            self._wake.clear()
            self._stage_active("pipeline")
            self._take_weighings()
            for job in self.reading.take_completed():
                self._assemble(job)
            self._store_events(self._ready(self.assembler.ready(self.clock.now())), lanes)
            for passage in self.assembler.take_unmatched(self.clock.now()):
                self.counters.unmatched_plates += 1
                log.warning(
                    "lane %d: plate %s seen by the camera at %s but no weighing matched it",
                    passage.lane,
                    ", ".join(p.text for p in passage.plates) or "(unread)",
                    passage.first_at.isoformat(),
                )
            if self._producers_done.is_set() and self._work.empty() and not self.reading.in_flight:
                break
            timeout = self._pipeline_timeout()
            beat = self.beats.get("pipeline")
            if beat is not None:
                beat.idle = timeout is None
            self._wake.wait(timeout)
        # shutting down: whatever waits for its matching window is stored now
        self._store_events(self._ready(self.assembler.flush()), lanes)
        self.reading.close()

    def _stage_active(self, name: str) -> None:
        beat = self.beats.get(name)
        if beat is not None:
            beat.idle = False
            beat.last = self.clock.monotonic()

    def _take_weighings(self) -> None:
        """Capture the queued weighings' frames (in queue order) and hand them to the pool."""
        while self.reading.in_flight < READS_IN_FLIGHT:
            try:
                lane, weighing = self._work.get_nowait()
            except queue.Empty:
                return
            try:
                self._capture(lane, weighing)
            except Exception:
                log.exception(
                    "lane %d: capture for the vehicle at %s failed",
                    lane.number,
                    weighing.measured_at.isoformat(),
                )

    def _pipeline_timeout(self) -> float | None:
        """Seconds until the pipeline must look again without being woken (``None``: not
        before it is woken): the next matching window to close, the reads still claimable,
        the reader pool's stuck rules."""
        waits: list[float] = []
        cfg = self.config.assemble
        now = self.clock.now()
        if self._assembling:
            due = min(self._assembling) + timedelta(seconds=cfg.window_after_s + cfg.settle_s)
            waits.append((due - now).total_seconds())
        if self._reads_until is not None:
            if self._reads_until < now:
                self._reads_until = None
            else:
                waits.append((self._reads_until - now).total_seconds())
        check = self.reading.next_check_s()
        if check is not None:
            waits.append(check)
        if not waits:
            return None
        return min(PIPELINE_TICK_S, max(0.01, min(waits)))

    def _capture(self, lane: Lane, weighing: VehicleWeighing) -> None:
        """Frames and clips of the lane's cameras for ``weighing``; the plates go to the pool."""
        cameras = self.cameras.get(lane.number, [])
        capture = capture_frames(
            cameras, weighing.measured_at, self.config.assemble.frames_per_camera
        )
        clips, _ = capture_clips(cameras, weighing.measured_at)
        self.reading.submit(lane.number, weighing, capture, clips)

    def _assemble(self, job: ReadJob) -> None:
        """A weighing whose plates are read (its lane's earlier ones are in already)."""
        weighing = job.weighing
        self.assembler.add_weighing(weighing)
        self.assembler.add_reads(job.lane, job.capture.reads, job.capture.frames)
        self._assembling.append(weighing.measured_at)
        cfg = self.config.assemble
        claimable = timedelta(seconds=cfg.window_before_s + cfg.settle_s)
        for read in job.capture.reads:
            if read.read_at is not None:
                until = read.read_at + claimable
                if self._reads_until is None or until > self._reads_until:
                    self._reads_until = until
        self._clips[(job.lane, weighing.measured_at)] = job.clips
        while len(self._clips) > QUEUE_SIZE:  # a weighing that never became an event
            self._clips.pop(next(iter(self._clips)))

    def _ready(self, events: list[VehicleEvent]) -> list[VehicleEvent]:
        """``events`` (from the assembler), no longer waited for."""
        for event in events:
            with contextlib.suppress(ValueError):
                self._assembling.remove(event.weighing.measured_at)
        return events

    def _store_events(self, events: list[VehicleEvent], lanes: dict[int, Lane]) -> None:
        for event in events:
            lane = lanes[event.weighing.lane]
            try:
                self._process_until_stored(lane, event)
            except Exception:
                log.exception(
                    "lane %d: vehicle at %s not processed",
                    lane.number,
                    event.weighing.measured_at.isoformat(),
                )

    def _process_until_stored(self, lane: Lane, event: VehicleEvent) -> None:
        """Process one vehicle; when the store cannot commit, retry rather than lose it."""
        attempt = 0
        while True:
            weighing = event.weighing
            try:
                self.process(lane, event)
                if attempt:
                    log.warning("evidence: storing works again (after %d attempt(s))", attempt)
                    self._unblocked("pipeline")
                return
            except EvidenceError as err:
                attempt += 1
                if attempt == 1:
                    log.error(
                        "evidence: lane %d vehicle at %s not stored yet: %s",
                        lane.number,
                        weighing.measured_at.isoformat(),
                        err,
                    )
                    if isinstance(err, DiskFullError):
                        self._blocked("pipeline", "disk full", str(err))
                else:
                    log.debug("evidence: retry %d failed: %s", attempt, err)
                self._beat("pipeline")
                # keep retrying while running (beating: a restart does not empty a disk); on
                # shutdown give it a last few tries
                if self.stop_event.wait(min(BLOCKED_RETRY_S, 0.5 * 2**attempt)) and attempt >= 3:
                    log.error(
                        "evidence: lane %d vehicle at %s LOST at shutdown: %s",
                        lane.number,
                        weighing.measured_at.isoformat(),
                        err,
                    )
                    return

    def process(self, lane: Lane, event: VehicleEvent) -> StoredRecord | None:
        """One assembled vehicle through the verdict into the evidence store."""
        assert self.store is not None
        weighing = event.weighing
        plates = event.plates
        plate = plates[0].text if plates else None
        verdict = judge(
            self._facts(lane, weighing, plate),
            self.rules,
            weighing.measured_at,
            device=self._device_facts(lane),
            permits=self.permits.permits_for(plate),
            watchlist=self.permits.watch_for(plate),
            vehicles=self.vehicles.vehicles_for(plate),
            registry_version=self.vehicles.version,
        )
        if verdict.watchlist_hit:
            self._alarm(
                "watchlist_hit",
                f"lane {lane.number}: watch-listed plate {plate}",
                {
                    "plate": plate,
                    "lane": lane.number,
                    "measured_at": weighing.measured_at.isoformat(),
                },
            )
        clips = self._clips.pop((lane.number, weighing.measured_at), ())
        if clips:
            event = replace(event, clips=clips)
        site = site_facts(self.config.station.site)
        event, composite = with_composite(
            event,
            verdict,
            site,
            enabled=self.config.evidence.composite_image,
            font_path=self.config.evidence.composite_font,
        )
        self.clock_monitor.poll(self.clock.now())  # a step made just now is seen by this record
        ctx = self._record_context(lane, weighing, site, composite)
        self.counters.vehicles += 1
        try:
            stored = self.store.commit(event, verdict, ctx)
        except Exception:
            self.counters.store_errors += 1
            raise
        self.counters.stored += 1
        status = verdict.status.value
        self.counters.by_status[status] = self.counters.by_status.get(status, 0) + 1
        self.recent = ([_summary(stored.record), *self.recent])[:10]
        if self.uplink is not None:
            self.uplink.wake()
        if self.on_stored is not None:
            self.on_stored(stored)
        return stored

    def _record_context(
        self, lane: Lane, weighing: VehicleWeighing, site: dict[str, Any], composite: str
    ) -> RecordContext:
        """The station facts sealed into a record of ``lane`` (DESIGN §4, §4a)."""
        scale_cfg = lane.scale
        return RecordContext(
            station_id=self.config.station.id,
            scale_id=scale_cfg.id,
            accuracy_class=scale_cfg.accuracy_class,
            certificate=scale_cfg.certificate,
            certificate_valid_until=(
                scale_cfg.certificate_valid_until.isoformat()
                if scale_cfg.certificate_valid_until
                else ""
            ),
            clock_synchronized=bool(self.clock_monitor.synchronized),
            software_version=__version__,
            legal_id=self.legal_id,
            audit_counter=self.audit.counter(),
            clock_stepped_s=self.clock_monitor.stepped_during(weighing.measured_at),
            site=site,
            metrology=metrology_facts(scale_cfg),
            required=tuple(self.config.evidence.required),
            expected=self._expected(lane),
            composite=composite,
        )

    def _expected(self, lane: Lane) -> Expected:
        """What the lane's cameras are to give: their roles and the clips (configured; a
        camera that is down or cannot give clips is then named as missing)."""
        return Expected(
            camera_roles=tuple(sorted({c.role for c in lane.cameras})),
            clip_cameras=tuple((c.id, c.role) for c in lane.cameras if c.clip),
        )

    def _facts(self, lane: Lane, weighing: VehicleWeighing, plate: str | None) -> VehicleFacts:
        declared = VehicleClass(lane.vehicle_class)
        known = {
            "declared_class": declared,
            "class_source": "lane" if declared != VehicleClass.UNKNOWN else "declared",
            "plate": plate,
        }
        try:
            return VehicleFacts.from_weighing(weighing, **known)
        except InvalidFactsError as err:
            # A device sent something impossible (e.g. spacings that do not fit the axle count):
            # judge without the doubtful part and flag it, never guess.
            log.error(
                "lane %d scale %s: inconsistent weighing (%s); not judged on it",
                lane.number,
                weighing.scale_id,
                err,
            )
            return VehicleFacts(
                axle_loads_kg=tuple(max(0, int(a)) for a in weighing.axle_loads_kg),
                gross_kg=max(0, int(weighing.gross_kg)),
                flags=weighing.flags | {WeighingFlag.INCONSISTENT},
                **known,  # type: ignore[arg-type]
            )

    @staticmethod
    def _device_facts(lane: Lane) -> DeviceFacts:
        s = lane.scale
        return DeviceFacts(
            accuracy_class=s.accuracy_class or None,
            certificate_valid_until=s.certificate_valid_until,
            min_speed_kmh=s.min_speed_kmh,
            max_speed_kmh=s.max_speed_kmh,
            scale_id=s.id,
        )

    # -- health (agent.station.health) -------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """Devices, stages and counters: the heartbeat's and ``status``'s station part."""
        return health.report(self)

    def _status_loop(self) -> None:
        """Every 2 s: clock sync, systemd watchdog and STATUS= line, diag dumps; status.json
        when it changed or every 30 s (health.StatusFile).

        Each part is guarded on its own: a status file that a full disk refuses must not
        stop the watchdog pings or the STATUS= line that says what is wrong."""
        while not self.stop_event.wait(2.0):
            self._beat("status")
            self._guarded("clock check", lambda: self.clock_monitor.poll(self.clock.now()))
            self._guarded("pending alarms", self._send_pending_alarms)
            wrote = self._guarded(
                "status.json", lambda: self.status_file.write(self, stale_s=STAGE_STALE_S)
            )
            try:
                now = self.clock.monotonic()
                stale = sdnotify.stale_stages(
                    {n: now - b.age(now) for n, b in self.beats.items()}, now, STAGE_STALE_S
                )
                self.watchdog.tick(stages_fresh=not stale, stale=stale)
                line = health.status_line(self, stale, self._vehicles_today())
                if not wrote:
                    line += "; status.json not written (disk full?)"
                self.notifier.status(line)
            except Exception:
                log.exception("status loop: tick failed")
            if self.dump_requested.is_set():
                self.dump_requested.clear()
                self._guarded("diag dump", self.dump_diag)

    def _guarded(self, what: str, fn: Callable[[], object]) -> bool:
        """Run one part of a status tick; an error is logged once per kind, not raised."""
        try:
            fn()
        except Exception as err:
            if what not in self._tick_failures:
                log.error("status loop: %s failed: %s", what, err)
            self._tick_failures.add(what)
            return False
        if what in self._tick_failures:
            self._tick_failures.discard(what)
            log.warning("status loop: %s works again", what)
        return True

    def _vehicles_today(self) -> int:
        assert self.db is not None
        return readonly.vehicles_since(self.db.read(), self.clock.now().date().isoformat())

    def scales_without_reading(self) -> list[str]:
        """Scales with no good reading yet (systemd READY=1 waits for them, bounded)."""
        return health.scales_without_reading(self.scales)

    def dump_diag(self) -> None:
        """Write ``diag/`` for ``roadside-agent diag`` (on SIGUSR1 and at shutdown)."""
        health.dump_diag(self)


def _known(facts: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in facts.items() if v is not None}


def _summary(record: dict[str, Any]) -> dict[str, Any]:
    plates = record.get("plates") or []
    return {
        "event_id": record["event_id"],
        "lane": record["lane"],
        "measured_at": record["measured_at"],
        "plate": plates[0]["text"] if plates else None,
        "axles": record["vehicle"]["axle_count"],
        "gross_kg": record["vehicle"]["gross_kg"],
        "status": record["verdict"]["status"],
    }
