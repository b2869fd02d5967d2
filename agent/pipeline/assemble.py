"""Assemble: match plate reads and photos to weighings by lane and time.

A pure stage (no I/O, no threads, no clock reads: the caller passes ``now``). The daemon feeds
it as things happen and collects what is due::

    assembler = Assembler(AssembleConfig(window_before_s=3, window_after_s=3))
    assembler.add_weighing(weighing)                   # from agent.pipeline.weighing
    assembler.add_reads(lane, reads, frames)           # from camera.capture + reader.read
    for event in assembler.ready(now):                 # VehicleEvent(weighing, plates, frames,
        ...                                            #              match_flags)
    for passage in assembler.take_unmatched(now):      # plates that never met a weighing
        ...

Rules, so that nothing is ever paired wrongly in silence:

* A read (or photo) at time ``t`` in lane ``L`` may belong to a weighing of lane ``L`` measured at
  ``T`` with ``T − window_before_s ≤ t ≤ T + window_after_s``. It goes to the nearest such
  weighing. When two weighings are about equally near (within ``ambiguity_margin_s``: two trucks
  close together), the read goes to neither and both are flagged ``ambiguous_plate``; such a
  photo is attached to neither.
* The reads of one weighing are voted per position (front, rear: a tractor and its trailer carry
  different plates), each camera's frames first (:mod:`agent.pipeline.voting`). Reads of one
  position that do not agree (frames without a majority, or two cameras naming different
  plates) give ``ambiguous_plate`` and no plate for that position.
* The record carries the front and the rear plate separately. When both are read and differ,
  and the rear one is not a trailer (挂) plate, the event is flagged ``front_rear_differ``: both
  plates stay in the record for the reviewing officer, neither is chosen.
* A weighing without any plate is flagged ``no_plate`` (no camera, no reader, no readable plate:
  the station keeps weighing); without any photo also ``no_image``.
* A read that no weighing claimed is returned by :meth:`Assembler.take_unmatched` as a
  :class:`PlatePassage` flagged ``plate_without_weighing`` (a vehicle that passed the camera but
  not the scale).
* A weighing is due once ``now ≥ T + window_after_s + settle_s``: ``settle_s`` covers the delay
  with which reads and later weighings arrive (the controller reports a vehicle after it has
  left the scale), so a competing weighing is known before the reads are handed out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field

from agent.domain import Frame, PlateRead, VehicleEvent, VehicleWeighing
from agent.pipeline.voting import front_rear_mismatch, vote_by_position

NO_PLATE = "no_plate"
NO_IMAGE = "no_image"
AMBIGUOUS_PLATE = "ambiguous_plate"
PLATE_WITHOUT_WEIGHING = "plate_without_weighing"
FRONT_REAR_DIFFER = "front_rear_differ"


class AssembleConfig(BaseModel):
    """``[assemble]``: how plates and photos are matched to weighings."""

    model_config = ConfigDict(extra="forbid")

    window_before_s: float = Field(
        default=3.0, ge=0, description="reads and photos up to this long before the weighing"
    )
    window_after_s: float = Field(
        default=3.0, ge=0, description="reads and photos up to this long after the weighing"
    )
    settle_s: float = Field(
        default=5.0,
        ge=0,
        description="extra wait after the window before a weighing is completed (late reads "
        "and late weighings)",
    )
    ambiguity_margin_s: float = Field(
        default=0.5,
        ge=0,
        description="a read about equally near two weighings (within this) goes to neither",
    )
    frames_per_camera: int = Field(
        default=2, ge=1, le=10, description="frames each camera gives per weighing"
    )
    min_vote_share: float = Field(
        default=0.6, gt=0.5, le=1, description="share of read confidence a plate must win by"
    )


@dataclass(frozen=True)
class PlatePassage:
    """Plates seen in a lane with no weighing to go with them."""

    lane: int
    first_at: datetime
    plates: tuple[PlateRead, ...]
    frames: tuple[Frame, ...] = ()
    match_flags: frozenset[str] = frozenset({PLATE_WITHOUT_WEIGHING})


@dataclass
class _Pending:
    weighing: VehicleWeighing
    reads: list[PlateRead]
    frames: list[Frame]
    flags: set[str]


_T = TypeVar("_T", PlateRead, Frame)


class Assembler:
    """Matches reads and frames to weighings per lane; see the module docstring."""

    def __init__(self, config: AssembleConfig | None = None) -> None:
        self.config = config or AssembleConfig()
        self._weighings: list[_Pending] = []
        self._reads: list[PlateRead] = []
        self._frames: list[Frame] = []

    # -- input ---------------------------------------------------------------------------------
    def add_weighing(self, weighing: VehicleWeighing) -> None:
        self._weighings.append(_Pending(weighing, [], [], set()))
        self._weighings.sort(key=lambda p: p.weighing.measured_at)

    def add_reads(
        self, lane: int, reads: Iterable[PlateRead], frames: Iterable[Frame] = ()
    ) -> None:
        """Plate reads and photos from the cameras of ``lane``.

        Raises ValueError for a read without ``read_at`` (the reader sets it from the frame).
        """
        for r in reads:
            if r.read_at is None:
                raise ValueError(f"plate read {r.text!r} in lane {lane} has no read_at time")
            self._reads.append(r if r.lane == lane else replace(r, lane=lane))
        for f in frames:
            self._frames.append(f if f.lane == lane else replace(f, lane=lane))

    # -- output --------------------------------------------------------------------------------
    def ready(self, now: datetime) -> list[VehicleEvent]:
        """The weighings whose matching window has closed, with their plates and photos."""
        due_until = now - self._delta(self.config.window_after_s + self.config.settle_s)
        due = [p for p in self._weighings if p.weighing.measured_at <= due_until]
        if not due:
            return []
        self._reads = self._hand_out(self._reads, due, _read_time, is_read=True)
        self._frames = self._hand_out(self._frames, due, _frame_time, is_read=False)
        events = [self._complete(p) for p in due]
        self._weighings = [p for p in self._weighings if p not in due]
        return events

    def take_unmatched(self, now: datetime) -> list[PlatePassage]:
        """Reads that no weighing can claim any more, grouped into passages per lane."""
        horizon = now - self._delta(self.config.window_before_s + self.config.settle_s)
        # Photos no weighing can claim any more are dropped after the passages took theirs.
        old = [r for r in self._reads if _read_time(r) <= horizon]
        if not old:
            self._drop_old_frames(horizon)
            return []
        claimable = {id(r) for r in old if self._candidates(_read_time(r), r.lane)}
        orphans = [r for r in old if id(r) not in claimable]
        taken = {id(r) for r in orphans}
        self._reads = [r for r in self._reads if id(r) not in taken]
        gap = self._delta(self.config.window_before_s + self.config.window_after_s)
        passages: list[PlatePassage] = []
        for lane in sorted({r.lane for r in orphans}):
            group: list[PlateRead] = []
            for r in sorted((r for r in orphans if r.lane == lane), key=_read_time):
                if group and _read_time(r) - _read_time(group[-1]) > gap:
                    passages.append(self._passage(lane, group))
                    group = []
                group.append(r)
            if group:
                passages.append(self._passage(lane, group))
        self._drop_old_frames(horizon)
        return passages

    def _drop_old_frames(self, horizon: datetime) -> None:
        self._frames = [
            f
            for f in self._frames
            if f.captured_at > horizon or self._candidates(f.captured_at, f.lane)
        ]

    def flush(self) -> list[VehicleEvent]:
        """Everything pending, now (at shut-down): the windows are cut short."""
        if not self._weighings:
            return []
        latest = max(p.weighing.measured_at for p in self._weighings)
        return self.ready(latest + self._delta(self.config.window_after_s + self.config.settle_s))

    @property
    def pending(self) -> int:
        return len(self._weighings)

    # -- internals -----------------------------------------------------------------------------
    @staticmethod
    def _delta(seconds: float) -> timedelta:
        return timedelta(seconds=seconds)

    def _candidates(self, t: datetime, lane: int) -> list[tuple[float, _Pending]]:
        before, after = self.config.window_before_s, self.config.window_after_s
        out: list[tuple[float, _Pending]] = []
        for p in self._weighings:
            if p.weighing.lane != lane:
                continue
            offset = (t - p.weighing.measured_at).total_seconds()
            if -before <= offset <= after:
                out.append((abs(offset), p))
        return sorted(out, key=lambda c: c[0])

    def _hand_out(
        self,
        items: Sequence[_T],
        due: list[_Pending],
        when: Callable[[_T], datetime],
        *,
        is_read: bool,
    ) -> list[_T]:
        """Give each item to its nearest weighing if that one is due; return the rest."""
        due_ids = {id(p) for p in due}
        keep: list[_T] = []
        for item in items:
            candidates = self._candidates(when(item), item.lane)
            if not candidates:
                keep.append(item)
                continue
            nearest_s, nearest = candidates[0]
            contested = (
                len(candidates) > 1
                and candidates[1][0] - nearest_s < self.config.ambiguity_margin_s
            )
            if contested:
                # Two trucks close together: this read cannot be told apart. Flag and drop it
                # once one of the two is being completed.
                if any(id(p) in due_ids for _, p in candidates[:2]):
                    if is_read:
                        for _, p in candidates[:2]:
                            p.flags.add(AMBIGUOUS_PLATE)
                    continue
                keep.append(item)
                continue
            if id(nearest) in due_ids:
                if isinstance(item, PlateRead):
                    nearest.reads.append(item)
                else:
                    nearest.frames.append(item)
                continue
            keep.append(item)
        return keep

    def _complete(self, pending: _Pending) -> VehicleEvent:
        flags = set(pending.flags)
        plates = vote_by_position(pending.reads, self.config.min_vote_share)
        voted = {p.position for p in plates}
        if {r.position for r in pending.reads} - voted:
            flags.add(AMBIGUOUS_PLATE)  # reads of one position disagree
        if not plates:
            flags.add(NO_PLATE)
        if front_rear_mismatch(plates):
            flags.add(FRONT_REAR_DIFFER)
        if not pending.frames:
            flags.add(NO_IMAGE)
        frames = tuple(sorted(pending.frames, key=lambda f: (f.captured_at, f.camera_id)))
        return VehicleEvent(
            weighing=pending.weighing,
            plates=tuple(plates),
            frames=frames,
            match_flags=frozenset(flags),
        )

    def _passage(self, lane: int, reads: list[PlateRead]) -> PlatePassage:
        first, last = _read_time(reads[0]), _read_time(reads[-1])
        frames = [
            f
            for f in self._frames
            if f.lane == lane
            and first - self._delta(self.config.ambiguity_margin_s)
            <= f.captured_at
            <= last + self._delta(self.config.ambiguity_margin_s)
        ]
        taken = {id(f) for f in frames}
        self._frames = [f for f in self._frames if id(f) not in taken]
        plates = vote_by_position(reads, self.config.min_vote_share)
        flags = {PLATE_WITHOUT_WEIGHING}
        if len(plates) < len({r.position for r in reads}):
            flags.add(AMBIGUOUS_PLATE)
        if front_rear_mismatch(plates):
            flags.add(FRONT_REAR_DIFFER)
        return PlatePassage(lane, first, tuple(plates), tuple(frames), frozenset(flags))


def _read_time(read: PlateRead) -> datetime:
    assert read.read_at is not None  # checked in add_reads
    return read.read_at


def _frame_time(frame: Frame) -> datetime:
    return frame.captured_at
