"""A simulated road: realistic trucks for the simulated scale, camera and plate twins.

Truck shapes follow ``shared/TRUCKS.md`` (typical Chinese trucks): axle counts 2 to 6, axle
spacings by build, empty and laden masses, and a share of overloaded trucks (6-axle tractors at
55-70 t, 3- and 4-axle dump trucks far above their limit) plus legal trucks close to the limit.

Each truck carries a plate and a photo from a labelled folder (``labels.csv`` with ``filename``
and ``plate`` columns, as in ``shared/fixtures/plates/full``); without such a folder the road
draws its own plate pictures, so the project works without ``shared/``.

The simulated scale, camera and plate reader of one station share a road by name
(:func:`road`), so the camera photographs the very truck the scale weighed.
"""

from __future__ import annotations

import csv
import io
import random
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

# (axles, build, spacings range per gap (mm), typical legal limit kg for the build, empty kg)
_SHAPES: list[tuple[int, str, list[tuple[int, int]], int, tuple[int, int]]] = [
    (2, "truck", [(3800, 5200)], 18000, (6000, 8000)),
    (3, "truck", [(3200, 4600), (1300, 1400)], 25000, (11000, 13000)),
    (3, "combination", [(3300, 3900), (6000, 8500)], 27000, (12000, 14000)),
    (4, "truck", [(1800, 2100), (2800, 4300), (1300, 1400)], 31000, (14000, 16000)),
    (4, "combination", [(3300, 3900), (6000, 8000), (1300, 1400)], 36000, (13000, 15000)),
    (
        5,
        "combination",
        [(3400, 3800), (6500, 7500), (1300, 1320), (1300, 1320)],
        43000,
        (15000, 17000),
    ),
    (
        6,
        "combination",
        [(3200, 3600), (1330, 1370), (6500, 7500), (1300, 1320), (1300, 1320)],
        49000,
        (15000, 18000),
    ),
]
# Relative frequency of each shape on a provincial trunk road (6-axle tractors dominate).
_SHAPE_WEIGHTS = [14, 12, 4, 12, 5, 8, 45]
# Share of each axle's load (steer axles light, tandem/tridem axles even).
_LOAD_PROFILE: dict[tuple[int, str], list[float]] = {
    (2, "truck"): [0.35, 0.65],
    (3, "truck"): [0.24, 0.38, 0.38],
    (3, "combination"): [0.25, 0.38, 0.37],
    (4, "truck"): [0.17, 0.17, 0.33, 0.33],
    (4, "combination"): [0.16, 0.30, 0.27, 0.27],
    (5, "combination"): [0.14, 0.24, 0.206, 0.207, 0.207],
    (6, "combination"): [0.12, 0.165, 0.165, 0.184, 0.183, 0.183],
}

_PROVINCES = "京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤青藏川宁琼"
_LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ"


@dataclass(frozen=True)
class Photo:
    path: Path
    plate: str
    color: str


@dataclass(frozen=True)
class SimulatedTruck:
    """One truck passing the station: the truth the simulated devices report from."""

    number: int
    lane: int
    passed_at: datetime
    plate: str
    plate_color: str
    photo: Path
    build: str  # truck | combination
    static_axle_loads_kg: tuple[int, ...]
    axle_spacings_mm: tuple[int, ...]
    speed_kmh: float
    legal_limit_kg: int

    @property
    def static_gross_kg(self) -> int:
        return sum(self.static_axle_loads_kg)


class PhotoLibrary:
    """Labelled plate photos: a folder with ``labels.csv``, or generated pictures."""

    def __init__(self, folder: Path | None, generated_dir: Path | None = None, seed: int = 0):
        self.photos: list[Photo] = []
        if folder is not None and (folder / "labels.csv").is_file():
            with (folder / "labels.csv").open(encoding="utf-8") as fh:
                for row in csv.DictReader(fh):
                    plate = (row.get("plate") or "").strip()
                    path = folder / row["filename"]
                    if plate and path.is_file():
                        self.photos.append(Photo(path, plate, _color_of(plate)))
        if not self.photos:
            self.photos = _generate_photos(generated_dir or Path("/tmp/roadside-sim-photos"), seed)

    def pick(self, rng: random.Random) -> Photo:
        return rng.choice(self.photos)

    def label_of(self, path: str | Path) -> Photo | None:
        p = Path(path)
        for photo in self.photos:
            if photo.path == p or photo.path.name == p.name:
                return photo
        return None


def _color_of(plate: str) -> str:
    # New-energy plates have 8 characters and are green; trucks carry yellow plates (the
    # fixtures are cars: blue). 学/挂 suffixes are yellow, 警 white.
    if len(plate) == 8:
        return "green"
    if plate.endswith(("学", "挂")):
        return "yellow"
    if plate.endswith("警"):
        return "white"
    return "blue"


def _generate_photos(directory: Path, seed: int, count: int = 12) -> list[Photo]:
    """Draw simple plate pictures so the simulation runs without the shared fixtures.

    The default bitmap font has no Chinese glyphs, so the province is drawn as a block and the
    label file carries the whole plate; only the simulated plate reader uses these.
    """
    from PIL import Image, ImageDraw

    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    photos = []
    for i in range(count):
        plate = (
            rng.choice(_PROVINCES)
            + rng.choice(_LETTERS)
            + "".join(rng.choice("0123456789" + _LETTERS) for _ in range(5))
        )
        path = directory / f"generated-{i:02d}.jpg"
        if not path.exists():
            img = Image.new("RGB", (720, 480), (90, 95, 100))
            draw = ImageDraw.Draw(img)
            draw.rectangle((250, 300, 470, 360), fill=(230, 190, 30), outline=(0, 0, 0))
            draw.rectangle((258, 310, 290, 350), fill=(0, 0, 0))
            draw.text((300, 322), plate[1:], fill=(0, 0, 0))
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=85)
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(buf.getvalue())
            tmp.replace(path)
        photos.append(Photo(path, plate, "yellow"))
    return photos


class SimulatedRoad:
    """Trucks arriving on the station's lanes, shared by the simulated devices."""

    def __init__(
        self,
        photos: PhotoLibrary,
        seed: int = 1,
        overload_share: float = 0.3,
        near_limit_share: float = 0.3,
    ) -> None:
        self.photos = photos
        self.overload_share = overload_share
        self.near_limit_share = near_limit_share
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._count = 0
        self._passed: dict[int, list[SimulatedTruck]] = {}

    def next_truck(self, lane: int, at: datetime) -> SimulatedTruck:
        """Make the next truck on ``lane`` pass at ``at``; it is remembered for the cameras."""
        with self._lock:
            rng = self._rng
            self._count += 1
            axles, build, gaps, limit, empty = rng.choices(_SHAPES, weights=_SHAPE_WEIGHTS)[0]
            spacings = tuple(rng.randint(lo, hi) for lo, hi in gaps)
            roll = rng.random()
            if roll < self.overload_share:
                # Enforcement data: 6-axle tractors at 55-70 t, dump trucks far above limit.
                gross = rng.randint(int(limit * 1.1), int(limit * 1.45))
            elif roll < self.overload_share + self.near_limit_share:
                gross = rng.randint(int(limit * 0.96), int(limit * 1.06))
            else:
                gross = rng.randint(empty[0], int(limit * 0.95))
            profile = _LOAD_PROFILE[(axles, build)]
            loads = [round(gross * share / 10) * 10 for share in profile]
            loads[-1] += gross - sum(loads)
            photo = self.photos.pick(rng)
            truck = SimulatedTruck(
                number=self._count,
                lane=lane,
                passed_at=at,
                plate=photo.plate,
                plate_color=photo.color,
                photo=photo.path,
                build=build,
                static_axle_loads_kg=tuple(loads),
                axle_spacings_mm=spacings,
                speed_kmh=round(rng.uniform(20.0, 70.0), 1),
                legal_limit_kg=limit,
            )
            history = self._passed.setdefault(lane, [])
            history.append(truck)
            del history[:-64]
            return truck

    def truck_at(self, lane: int, at: datetime, window_s: float = 5.0) -> SimulatedTruck | None:
        """The truck that passed ``lane`` closest to ``at`` (within ``window_s``)."""
        with self._lock:
            best: SimulatedTruck | None = None
            best_gap = timedelta(seconds=window_s)
            for truck in self._passed.get(lane, []):
                gap = abs(truck.passed_at - at)
                if gap <= best_gap:
                    best, best_gap = truck, gap
            return best

    def uniform(self, lo: float, hi: float) -> float:
        with self._lock:
            return self._rng.uniform(lo, hi)

    def gauss(self, mu: float, sigma: float) -> float:
        with self._lock:
            return self._rng.gauss(mu, sigma)


_ROADS: dict[str, SimulatedRoad] = {}
_ROADS_LOCK = threading.Lock()


def road(
    name: str = "default",
    photos_dir: Path | None = None,
    seed: int = 1,
    overload_share: float = 0.3,
) -> SimulatedRoad:
    """The shared road called ``name`` (created on first use with these settings)."""
    with _ROADS_LOCK:
        existing = _ROADS.get(name)
        if existing is None:
            existing = SimulatedRoad(
                PhotoLibrary(photos_dir, seed=seed), seed=seed, overload_share=overload_share
            )
            _ROADS[name] = existing
        return existing


def forget_roads() -> None:
    """Drop every shared road (tests start each station on a fresh road)."""
    with _ROADS_LOCK:
        _ROADS.clear()
