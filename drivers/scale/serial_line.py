"""Serial lines and Modbus links: one owner and one lock per physical line.

Two kinds of line live here:

* :class:`ModbusLink` – a pymodbus sync client (RTU over a serial port, or TCP) shared by every
  scale that talks through it. An RS-485 bus carries several devices (indicator, detector
  I/O module, WIM controller) on one port; each device is its own scale object with its own
  :class:`~drivers.scale.base.Backoff`, and the link's lock serialises requests. A dead
  device costs one request timeout per backoff period, never the whole bus.
* :class:`SerialStream` – a port that an indicator writes to continuously (XK3190, Toledo,
  WIM line records). Exactly one reader owns it.

Both open ports by pyserial URL (``/dev/ttyUSB0``, ``/dev/serial/by-id/...``, ``loop://``,
``socket://host:port``, ``spy://...``) and reopen them by themselves after a USB adapter is
unplugged and plugged back: a failed port is closed, and the next attempt (after the
backoff, at most ``reconnect_max_s``) opens it again by name.
"""

from __future__ import annotations

import collections
import logging
import termios
import threading
from collections.abc import Callable
from typing import Any

from drivers.scale.base import ScaleConfigError, ScaleError

log = logging.getLogger(__name__)

#: What a serial port may raise. ``termios.error`` is not an ``OSError``: pyserial lets it
#: through from ``tcsetattr`` when the adapter's driver refuses the settings (7E1 on an
#: adapter that cannot do it), on open and on a later reconfiguration.
PORT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ValueError,
    TypeError,
    AttributeError,
    termios.error,
)
#: Bytes taken from the port at once after the first one arrived. A ``socket://`` port's
#: ``in_waiting`` only says "readable" (1), which made reads of two bytes.
READ_CHUNK = 4096


class LinkError(ScaleError):
    """The line itself failed (port gone, connection refused): every device on it is affected."""


class DeviceError(ScaleError):
    """One device did not answer or answered with an exception; the line is fine."""


class ModbusLink:
    """A pymodbus sync client with a lock, shared by the scales on one line.

    Raw frames of each request go into the ring buffer of the scale that made it (pymodbus's
    ``trace_packet`` hook), so an error log carries that device's bytes.
    """

    def __init__(self, key: str, factory: Callable[[Callable[[bool, bytes], bytes]], Any]) -> None:
        self.key = key
        self.lock = threading.Lock()
        self._tail: collections.deque[bytes] | None = None
        self.client: Any = factory(self._trace)
        self.users = 0
        from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

        # Order matters in ``call``: the specific ones before their base class.
        self._errors = (ConnectionException, ModbusIOException, ModbusException)

    def _trace(self, sending: bool, data: bytes) -> bytes:
        tail = self._tail
        if tail is not None and data:
            # pymodbus hands the receive buffer over again as it grows; keep the longest.
            if not sending and tail and data.startswith(tail[-1]) and self._last_rx:
                tail[-1] = bytes(data)
            else:
                tail.append(bytes(data))
            self._last_rx = not sending
        return data

    _last_rx = False

    def call(self, tail: collections.deque[bytes], what: str, fn: Callable[[Any], Any]) -> Any:
        """Run ``fn(client)`` under the line lock; pymodbus / pyserial errors become ours.

        Raises :class:`LinkError` when the line is down (the port is closed so the next call
        reopens it) and :class:`DeviceError` when only this request failed.
        """
        ConnectionException, ModbusIOException, ModbusException = self._errors  # noqa: N806
        with self.lock:
            self._tail = tail
            self._last_rx = False
            try:
                if not self.client.connected and not self.client.connect():
                    raise LinkError(f"{self.key}: cannot open the line")
                response = fn(self.client)
            except LinkError:
                self._close_quietly()
                raise
            except ConnectionException as err:
                self._close_quietly()
                raise LinkError(f"{self.key}: connection lost during {what} ({err})") from err
            except ModbusIOException as err:
                raise DeviceError(f"no answer to {what} ({err})") from err
            except ModbusException as err:
                raise DeviceError(f"{what} failed ({err})") from err
            except PORT_ERRORS as err:
                # pyserial raises SerialException (an OSError), termios.error, and on a
                # vanished USB adapter TypeError/ValueError from a half-closed port.
                self._close_quietly()
                raise LinkError(f"{self.key}: {type(err).__name__} during {what}: {err}") from err
            finally:
                self._tail = None
        if response is None:
            raise DeviceError(f"no answer to {what}")
        if response.isError():
            raise DeviceError(f"{what}: device answered with exception {response}")
        return response

    def _close_quietly(self) -> None:
        try:
            self.client.close()
        except Exception as err:  # closing a vanished port may raise anything
            log.debug("%s: error while closing: %s", self.key, err)


_LINKS: dict[str, ModbusLink] = {}
_STREAM_OWNERS: dict[str, object] = {}
_REGISTRY_LOCK = threading.Lock()


def acquire_link(
    key: str, factory: Callable[[Callable[[bool, bytes], bytes]], Any], owner: str
) -> ModbusLink:
    """The shared link for ``key`` (a port URL or ``tcp://host:port``), created on first use."""
    with _REGISTRY_LOCK:
        if key in _STREAM_OWNERS:
            raise ScaleConfigError(
                f"{owner}: line {key} is already read by a continuous-output scale; "
                "one serial port has one owner"
            )
        link = _LINKS.get(key)
        if link is None:
            link = ModbusLink(key, factory)
            _LINKS[key] = link
        link.users += 1
        return link


def release_link(link: ModbusLink) -> None:
    with _REGISTRY_LOCK:
        link.users -= 1
        if link.users <= 0:
            _LINKS.pop(link.key, None)
            with link.lock:
                link._close_quietly()


class SerialStream:
    """A serial port (pyserial URL) read by exactly one continuous-output scale.

    ``read(timeout_s)`` returns what came (maybe ``b""``); it raises :class:`LinkError` when
    the port cannot be opened or fails, after closing it, so the caller's backoff decides when
    :meth:`read` tries to open it again.
    """

    def __init__(
        self,
        url: str,
        owner: str,
        *,
        baudrate: int = 9600,
        bytesize: int = 8,
        parity: str = "N",
        stopbits: float = 1,
    ) -> None:
        self.url = url
        self.owner = owner
        self.settings = {
            "baudrate": baudrate,
            "bytesize": bytesize,
            "parity": parity,
            "stopbits": stopbits,
        }
        self._port: Any = None
        with _REGISTRY_LOCK:
            if url in _LINKS or url in _STREAM_OWNERS:
                raise ScaleConfigError(
                    f"{owner}: serial line {url} is already used by another scale; "
                    "one serial port has one owner"
                )
            _STREAM_OWNERS[url] = self

    def open(self) -> None:
        import serial

        try:
            port = serial.serial_for_url(url=self.url, timeout=0.05, **self.settings)
        except PORT_ERRORS as err:
            # pyserial closes the descriptor itself when configuring fails on open.
            raise LinkError(f"cannot open serial port {self.url}{self._refused(err)}") from err
        self._port = port

    def _refused(self, err: BaseException) -> str:
        """The error for a person: settings the adapter refused are named as such."""
        if isinstance(err, termios.error):
            s = self.settings
            return (
                f": the adapter refused the settings {s['baudrate']} "
                f"{s['bytesize']}{s['parity']}{s['stopbits']} ({err}); "
                "for a 7E1 protocol read the line as 8N1 (see docs/weighing.md)"
            )
        return f": {err}"

    def read(self, timeout_s: float) -> bytes:
        if self._port is None:
            self.open()
        port = self._port
        try:
            port.timeout = max(0.0, timeout_s)
            first = port.read(1)
            if not first:
                return b""
            port.timeout = 0  # what has come already, in one chunk
            return bytes(first + port.read(READ_CHUNK))
        except PORT_ERRORS as err:
            # Unplugged USB adapter: SerialException "device reports readiness to read but
            # returned no data", or EIO; a pty whose other side closed: EIO.
            self.close_port()
            raise LinkError(f"serial port {self.url} failed: {err}") from err

    def write(self, data: bytes) -> None:
        if self._port is None:
            self.open()
        try:
            self._port.write(data)
        except PORT_ERRORS as err:
            self.close_port()
            raise LinkError(f"serial port {self.url} failed on write: {err}") from err

    def close_port(self) -> None:
        port, self._port = self._port, None
        if port is not None:
            try:
                port.close()
            except Exception as err:  # a vanished adapter may fail to close
                log.debug("%s: error while closing %s: %s", self.owner, self.url, err)

    def release(self) -> None:
        self.close_port()
        with _REGISTRY_LOCK:
            if _STREAM_OWNERS.get(self.url) is self:
                del _STREAM_OWNERS[self.url]
