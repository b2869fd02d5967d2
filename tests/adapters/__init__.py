"""pyserial URL handlers standing in for USB serial adapters with known limits.

``no7e1:///path/to/tty`` opens the real tty at ``path`` like ``/dev/ttyUSB0`` but refuses 7
data bits and parity the way a kernel driver does for an adapter chip that cannot do them:
``tcsetattr`` fails with EINVAL, which pyserial lets through as ``termios.error``.
Register with ``serial.protocol_handler_packages.append("tests.adapters")``.
"""
