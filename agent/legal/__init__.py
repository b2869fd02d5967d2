"""The legal check: is this vehicle over the limit? (Order 62 Art. 3, Art. 43)

Pure: no I/O beyond loading the rule tables at start-up, no clock reads (time passed in).

- :mod:`agent.legal.rules`: ``[legal]`` config and the rule tables in ``firmware_config/legal``;
- :mod:`agent.legal.facts`: what the check is told (vehicle, scale, permits, watch-list);
- :mod:`agent.legal.engine`: the verdict, step by step.

The daemon loads the rules once (``rules = load_rules(config.legal)``) and calls
``judge(facts, rules, at, device=..., permits=..., watchlist=...)`` for every vehicle.
"""

from agent.legal.engine import check_device, classify, gross_limit, judge, tolerance
from agent.legal.facts import (
    DeviceFacts,
    InvalidFactsError,
    Permit,
    VehicleFacts,
    WatchEntry,
    normalize_plate,
)
from agent.legal.rules import SHIPPED_RULES_DIR, LegalConfig, LegalRulesError, Rules, load_rules

__all__ = [
    "SHIPPED_RULES_DIR",
    "DeviceFacts",
    "InvalidFactsError",
    "LegalConfig",
    "LegalRulesError",
    "Permit",
    "Rules",
    "VehicleFacts",
    "WatchEntry",
    "check_device",
    "classify",
    "gross_limit",
    "judge",
    "load_rules",
    "normalize_plate",
    "tolerance",
]
