"""``no7e1://`` : a tty whose adapter refuses 7 data bits and parity (see the package doc)."""

from __future__ import annotations

import errno
import termios
from typing import Any

import serial


class Serial(serial.Serial):  # type: ignore[misc]
    def from_url(self, url: str) -> str:
        return url.removeprefix("no7e1://")

    def open(self) -> None:
        path = self.from_url(str(self.portstr or ""))
        self._port = self.portstr = path  # pyserial's posix open() opens ``portstr``
        super().open()

    def _reconfigure_port(self, force_update: bool = False) -> Any:
        if self._bytesize != 8 or self._parity != serial.PARITY_NONE:
            # What tcsetattr raises on such an adapter; pyserial does not wrap it.
            raise termios.error(errno.EINVAL, "Invalid argument")
        return super()._reconfigure_port(force_update)
