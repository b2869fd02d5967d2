"""A pseudo-terminal that stands in for a USB serial adapter in tests and demos.

The scale opens :attr:`PtyPair.path` (a symlink, like ``/dev/serial/by-id/...``) while the
test or simulator writes the indicator's bytes into the master side. :meth:`unplug` closes
both sides (the reader sees EIO, as when a USB adapter is pulled); :meth:`plug` makes a new
pty and points the symlink at it, as udev does when the adapter comes back.
"""

from __future__ import annotations

import contextlib
import os
import termios
import tty
from pathlib import Path


class PtyPair:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.master: int | None = None
        self.slave: int | None = None
        self.plug()

    def plug(self) -> None:
        master, slave = os.openpty()
        # A simulator writing while nobody reads must not block: writes fail instead (and
        # :meth:`write` returns 0), like bytes lost on a line with no listener.
        os.set_blocking(master, False)
        tty.setraw(slave)
        attrs = termios.tcgetattr(slave)
        attrs[3] &= ~termios.ECHO
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
        self.master, self.slave = master, slave
        tmp = self.path.with_name(self.path.name + ".new")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(os.ttyname(slave))
        tmp.replace(self.path)

    def unplug(self) -> None:
        for fd in (self.master, self.slave):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.master = self.slave = None
        self.path.unlink(missing_ok=True)

    def write(self, data: bytes) -> int:
        """Write as the indicator; returns 0 when unplugged."""
        if self.master is None:
            return 0
        try:
            return os.write(self.master, data)
        except OSError:
            return 0

    def read(self, size: int = 4096) -> bytes:
        if self.master is None:
            return b""
        return os.read(self.master, size)

    def close(self) -> None:
        self.unplug()
