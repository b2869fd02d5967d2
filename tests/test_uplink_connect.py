"""A broker that cannot be reached at start-up is said at once, with its reason (issue 16)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from agent.uplink.client import UplinkConfig
from agent.uplink.delivery import Uplink
from tests.conftest import StationData, free_port, wait_until


def test_unreachable_broker_at_start_is_an_error_with_its_reason(
    station: StationData, make_uplink: Callable[..., Uplink], caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()  # nothing listens there: every connect is refused
    config = UplinkConfig(host="127.0.0.1", port=port, reconnect_min_s=1.0, reconnect_max_s=1.0)
    caplog.set_level(logging.DEBUG, logger="agent.uplink")
    up = make_uplink(station, config)
    wait_until(lambda: up.stats()["connect_failures"] >= 2, 15, "two refused connects")
    stats = up.stats()
    assert stats["connects"] == 0 and not stats["connected"]
    assert stats["last_error"].startswith("cannot connect to the broker: ")
    assert "refused" in stats["last_error"].lower()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and "uplink" in r.name]
    assert len(errors) == 1, [r.getMessage() for r in errors]  # the repeats are DEBUG
    assert "cannot connect to the broker" in errors[0].getMessage()
    assert f"127.0.0.1:{port}" in errors[0].getMessage()
