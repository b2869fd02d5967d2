"""``roadside-agent check-config FILE``: every problem in a station config, one per line.

Exit 0 when the file is usable, 78 (EX_CONFIG) when it is not, so the systemd unit can run it
as ``ExecStartPre=`` and ``RestartPreventExitStatus=78`` stops a restart loop.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "check-config",
        help="validate a station config file (exit 78 when it is bad)",
        description="Validate a station config: each problem as "
        "'file:line  key.path  value → what is wrong'.",
    )
    p.add_argument("file", help="the station TOML file")
    p.add_argument("--json", action="store_true", help="print the problems as JSON")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from agent.commands._common import EX_CONFIG
    from agent.config import ConfigError, load_config

    try:
        cfg = load_config(args.file)
    except ConfigError as err:
        if args.json:
            print(
                json.dumps(
                    {
                        "ok": False,
                        "problems": [
                            {"line": p.line, "path": p.path, "value": p.value, "message": p.message}
                            for p in err.problems
                        ],
                    },
                    ensure_ascii=False,
                )
            )
        else:
            for p in err.problems:
                print(p.format(err.filename), file=sys.stderr)
            print(f"{len(err.problems)} problem(s) in {err.filename}", file=sys.stderr)
        return EX_CONFIG
    if args.json:
        print(
            json.dumps(
                {
                    "ok": True,
                    "station": cfg.station.id,
                    "lanes": len(cfg.lanes),
                    "config_hash": cfg.digest,
                }
            )
        )
    else:
        print(f"{args.file}: OK (station {cfg.station.id}, {len(cfg.lanes)} lane(s))")
    return 0
