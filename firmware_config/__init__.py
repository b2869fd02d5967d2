"""Data the agent reads: example station configs, register maps, legal limit tables.

A package only so that the files install with the wheel (``importlib`` finds them under
``/opt/roadside-agent`` as in a source checkout). Adding an indicator model or a rule change is a
data change here, not a code change.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parent
