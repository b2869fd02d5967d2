"""``python -m agent`` is the same as the ``roadside-agent`` command."""

from agent.cli import main

raise SystemExit(main())
