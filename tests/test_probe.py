"""``roadside-agent probe``: a technician learns within seconds whether a scale is right."""

from __future__ import annotations

import argparse
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.commands import probe
from drivers.scale import xk3190
from drivers.scale.modbus_sim import ModbusDeviceSimulator, constant
from drivers.scale.pty import PtyPair

pytestmark = pytest.mark.timeout(60)


def run_probe(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="roadside-agent")
    sub = parser.add_subparsers(dest="command")
    probe.add_parser(sub)
    args = parser.parse_args(["probe", *argv])
    code: int = args.func(args)
    return code


def last_json(out: str) -> dict[str, object]:
    result: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return result


@pytest.fixture
def sim() -> Iterator[ModbusDeviceSimulator]:
    s = ModbusDeviceSimulator("generic", constant(42120.0)).start()
    yield s
    s.stop()


def test_probe_modbus_tcp_json(
    sim: ModbusDeviceSimulator, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run_probe(
        [
            "scale",
            "--type",
            "modbus_tcp",
            "--port",
            f"127.0.0.1:{sim.port}",
            "--seconds",
            "0.6",
            "--option",
            "map=generic",
            "--option",
            "poll_interval_s=0.02",
            "--json",
        ]
    )
    assert code == 0
    result = last_json(capsys.readouterr().out)
    assert result["gross_kg"] == 42120.0
    assert result["stable"] is True
    assert isinstance(result["readings"], list) and len(result["readings"]) >= 5
    assert result["errors"] == []
    assert isinstance(result["raw_tail"], list) and result["raw_tail"]


def test_probe_with_station_config(
    sim: ModbusDeviceSimulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "station.toml"
    cfg.write_text(
        '[[lanes]]\nnumber = 1\n[lanes.scale]\ntype = "modbus_tcp"\n'
        f'host = "127.0.0.1"\nport = {sim.port}\nmap = "generic"\n',
        encoding="utf-8",
    )
    assert run_probe(["scale", "--config", str(cfg), "--seconds", "0.4", "--json"]) == 0
    assert last_json(capsys.readouterr().out)["gross_kg"] == 42120.0


def test_probe_xk3190_human_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pty = PtyPair(tmp_path / "ttyUSB0")
    stop = threading.Event()

    def talk() -> None:
        while not stop.wait(0.02):
            pty.write(xk3190.encode(31.46, 2))

    t = threading.Thread(target=talk, daemon=True)
    t.start()
    try:
        code = run_probe(
            [
                "scale",
                "--type",
                "xk3190",
                "--port",
                str(pty.path),
                "--baudrate",
                "9600",
                "--option",
                "unit=t",
                "--option",
                "stable_window_s=0.2",
                "--seconds",
                "1",
            ]
        )
    finally:
        stop.set()
        t.join(2)
        pty.close()
    out = capsys.readouterr().out
    assert code == 0
    assert "31,460.0 kg" in out
    assert "last stable gross: 31,460.0 kg" in out
    assert "02 2b 30 30 33 31 34 36 32" in out, "raw frames in hex"
    assert "verdict: OK" in out


def test_probe_dead_port_names_the_problem(capsys: pytest.CaptureFixture[str]) -> None:
    code = run_probe(["scale", "--type", "toledo", "--port", "/dev/ttyNOPE", "--seconds", "0.5"])
    out = capsys.readouterr().out
    assert code == probe.EX_UNAVAILABLE
    assert "/dev/ttyNOPE" in out and "NO READINGS" in out


def test_probe_rejects_unknown_type_and_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_probe(["scale", "--type", "xk319", "--port", "loop://"]) == probe.EX_CONFIG
    assert "did you mean 'xk3190'" in capsys.readouterr().err
    code = run_probe(["scale", "--type", "xk3190", "--port", "loop://", "--option", "baud=9600"])
    assert code == probe.EX_CONFIG
    assert "baud" in capsys.readouterr().err


def test_probe_ports_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_probe(["ports", "--json"]) == 0
    result = last_json(capsys.readouterr().out)
    assert isinstance(result["ports"], list)


@pytest.mark.parametrize("kind", ["modbus_tcp", "xk3190", "toledo"])
def test_probe_simulate(kind: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = run_probe(["scale", "--type", kind, "--simulate", "--seconds", "0.6", "--json"])
    assert code == 0
    result = last_json(capsys.readouterr().out)
    assert result["reading_count"]


def test_probe_warns_on_an_implausible_float32_and_shows_every_word_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A float32 served CDAB and read ABCD: 31 460 kg reads as about −131 355.8 kg, not
    absurd enough to see at a glance; probe names the plausible order."""
    base = Path(__file__).parent.parent / "firmware_config" / "registermaps" / "generic.toml"
    text = base.read_text().replace('type = "int32"', 'type = "float32"')
    served = tmp_path / "served_cdab.toml"
    served.write_text(text.replace('word_order = "big"', 'word_order = "little"'))
    read = tmp_path / "read_abcd.toml"
    read.write_text(text)
    sim = ModbusDeviceSimulator(str(served), constant(31460.0)).start()
    try:
        code = run_probe(
            [
                "scale",
                "--type",
                "modbus_tcp",
                "--port",
                f"127.0.0.1:{sim.port}",
                "--option",
                f"map={read}",
                "--seconds",
                "0.5",
                "--capacity-kg",
                "60000",
                "--json",
            ]
        )
    finally:
        sim.stop()
    out = last_json(capsys.readouterr().out)
    assert code == 0
    check = out["word_order_check"]
    assert isinstance(check, dict)
    assert check["map_order"] == "ABCD" and check["plausible"] == ["CDAB"]
    assert check["values_kg"]["CDAB"] == pytest.approx(31460.0)
    assert check["values_kg"]["ABCD"] == pytest.approx(-131355.8, abs=0.1)


def test_probe_type_help_lists_the_formats(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        run_probe(["scale", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in (
        "wim_lines",
        "xk3190",
        "a12",
        "reversed",
        "in_order",
        "tf1",
        "dialect=liden",
        "stx=false",
    ):
        assert name in text


def test_probe_ports_labels_what_pyserial_does_not_know(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # what pyserial's comports() reports for a built-in UART (/dev/ttyS0) and a USB adapter
    ports = [
        {"device": "/dev/ttyS0", "by_id": "", "by_path": "", "description": "n/a", "hwid": "n/a"},
        {
            "device": "/dev/ttyUSB0",
            "by_id": "/dev/serial/by-id/usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0",
            "by_path": "",
            "description": "FT232R USB UART",
            "hwid": "USB VID:PID=0403:6001 SER=A50285BI LOCATION=1-1.2:1.0",
        },
    ]
    monkeypatch.setattr(probe, "list_ports", lambda: ports)
    assert run_probe(["ports"]) == 0
    out = capsys.readouterr().out
    assert "n/a" not in out
    assert out.count("description: not reported by the kernel") == 1
    assert "  description: FT232R USB UART\n" in out
    assert "  hardware id: USB VID:PID=0403:6001" in out
