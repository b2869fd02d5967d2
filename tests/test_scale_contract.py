"""One contract over every scale backend, each against its simulated twin (python-can's
back2back test): config keys documented and strict, a measurement arrives, ``recv`` honours
its timeout, health is kept, ``shutdown`` is idempotent and final."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, suppress
from pathlib import Path

import pytest
from pydantic import ValidationError

from drivers.scale import SCALES, Scale, ScaleConfig, ScaleError, toledo, xk3190
from drivers.scale.modbus_sim import ModbusDeviceSimulator, constant
from drivers.scale.wim_lines import format_csv

pytestmark = pytest.mark.timeout(60)

BACKENDS = ["simulated", "modbus_tcp", "modbus_rtu", "xk3190", "toledo", "wim_modbus", "wim_lines"]

# A backend under test: the scale, and "make the device produce one measurement".
Rig = tuple[Scale, Callable[[], None]]


def _socat(tmp: Path) -> tuple[Path, Path, subprocess.Popen[bytes]]:
    a, b = tmp / "ttyA", tmp / "ttyB"
    proc = subprocess.Popen(
        ["socat", f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 5
    while not (a.exists() and b.exists()) and time.monotonic() < deadline:
        time.sleep(0.01)
    return a, b, proc


def make_rig(name: str, stack: ExitStack, tmp: Path) -> Rig:
    cls = SCALES.get(name)
    if name == "simulated":
        cfg = cls.Config.model_validate(
            {"type": name, "vehicles_per_min": 600, "road": f"contract-{tmp.name}"}
        )
        return cls(cfg), lambda: None  # type: ignore[call-arg]
    if name in ("modbus_tcp", "wim_modbus"):
        sim = ModbusDeviceSimulator("generic" if name == "modbus_tcp" else "generic_wim")
        sim.set_script(constant(12000.0))
        stack.callback(sim.stop)
        sim.start()
        cfg = cls.Config.model_validate(
            {"type": name, "host": "127.0.0.1", "port": sim.port, "poll_interval_s": 0.02}
        )
        scale = cls(cfg)  # type: ignore[call-arg]
        if name == "wim_modbus":

            def produce() -> None:
                scale.recv(0.2)  # the counter at start-up counts as delivered
                sim.push_record([6000, 11000], axle_spacings_mm=[4500])

            return scale, produce
        return scale, lambda: None
    if name == "modbus_rtu":
        if shutil.which("socat") is None:
            pytest.skip("socat not installed")
        a, b, proc = _socat(tmp)
        stack.callback(lambda: (proc.terminate(), proc.wait(5)))
        sim = ModbusDeviceSimulator("generic", constant(12000.0), serial_port=str(b))
        stack.callback(sim.stop)
        sim.start()
        cfg = cls.Config.model_validate({"type": name, "port": str(a), "timeout_s": 0.3})
        return cls(cfg), lambda: None  # type: ignore[call-arg]
    cfg = cls.Config.model_validate({"type": name, "port": "loop://"})
    scale = cls(cfg)  # type: ignore[call-arg]
    frames = {
        "xk3190": xk3190.encode(12000, 0) * 2,
        "toledo": toledo.encode(12000) * 3,
        "wim_lines": format_csv(1, 40.0, [6000, 11000], [4500]).encode(),
    }
    return scale, lambda: scale.stream.write(frames[name])  # type: ignore[attr-defined]


@pytest.fixture(params=BACKENDS)
def rig(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Rig]:
    with ExitStack() as stack:
        scale, produce = make_rig(request.param, stack, tmp_path)
        stack.callback(scale.shutdown)
        yield scale, produce


def test_registry_lists_exactly_the_fixed_names() -> None:
    assert set(SCALES.names()) == set(BACKENDS)


@pytest.mark.parametrize("name", BACKENDS)
def test_config_is_strict_and_documented(name: str) -> None:
    cfg_cls = SCALES.get(name).Config
    assert issubclass(cfg_cls, ScaleConfig)
    for key, info in cfg_cls.model_fields.items():
        assert info.description, f"{name}.{key} has no description"
    with pytest.raises(ValidationError):
        cfg_cls.model_validate({"type": name, "port": "loop://", "host": "h", "no_such_key": 1})


def test_a_measurement_arrives(rig: Rig) -> None:
    scale, produce = rig
    produce()
    deadline = time.monotonic() + 5
    m = None
    while m is None and time.monotonic() < deadline:
        m = scale.recv(0.3)
    assert m is not None
    assert m.at.tzinfo is not None
    assert scale.health.state == "ok"
    assert scale.health.reads >= 1
    assert scale.health.last_good_at == m.at


def test_recv_honours_its_timeout(rig: Rig) -> None:
    scale, _ = rig
    for _ in range(3):
        t0 = time.monotonic()
        with suppress(ScaleError):
            scale.recv(0.2)
        assert time.monotonic() - t0 < 0.2 + 0.6


def test_shutdown_is_idempotent_and_final(rig: Rig) -> None:
    scale, _ = rig
    scale.shutdown()
    scale.shutdown()
    assert scale.health.state == "closed"
    with pytest.raises(ScaleError):
        scale.recv(0.1)
