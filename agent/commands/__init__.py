"""One module per ``roadside-agent`` subcommand (see ``agent/cli.py``)."""
