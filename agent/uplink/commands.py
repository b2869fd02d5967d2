"""Platform commands on ``{root}/cmd/{name}``: parsing, validation and dispatch.

A command is a JSON object (UTF-8, at most :data:`MAX_COMMAND_BYTES`); the reply goes to the
MQTT 5 response topic with the request's correlation data (see ``docs/uplink.md``)::

    {"ok": true,  "command": "ping", "result": {...}}
    {"ok": false, "command": "frobnicate", "error": {"code": "unknown-command", "message": "..."}}

A malformed, oversized or unknown command gets an error reply and changes nothing: payloads are
checked here before any handler runs, and a handler rejects with :class:`CommandError` before
it touches state. The station injects the handlers for what it owns (permits, watch-list,
cameras, config); ``ping`` and ``resend`` belong to the uplink (:func:`builtin_handlers`).
:class:`CommandRunner` runs them one at a time on the ``uplink-cmd`` thread. :func:`set_config`
is the validate → refuse protected changes → probe → back up → apply sequence the station's
``set-config`` handler wraps around its own config loading.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from agent import __version__
from agent.store.db import Database
from agent.store.evidence import requeue_kept_events
from agent.uplink import messages
from agent.uplink.signing import aware_time

log = logging.getLogger(__name__)

#: Largest command payload accepted, bytes (a full permit list fits; a runaway payload does not).
MAX_COMMAND_BYTES = 1_048_576
#: Deepest nesting of objects and arrays in a command (the deepest documented is 3).
MAX_NESTING = 32
#: Command names: lower-case words joined by hyphens.
NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
#: Commands the platform may send (DESIGN §5); a station without a handler replies
#: ``unsupported``, a name outside this list gets ``unknown-command``.
KNOWN_COMMANDS = (
    "ping",
    "set-permits",
    "set-watchlist",
    "set-vehicles",
    "capture-test",
    "resend",
    "get-config",
    "set-config",
)

#: Platform commands waiting to run; more get an immediate ``busy`` reply.
COMMAND_QUEUE = 16

Handler = Callable[[dict[str, Any]], dict[str, Any]]


class CommandError(Exception):
    """A command was rejected; ``code`` is machine-readable, the message is for people."""

    def __init__(self, code: str, message: str, details: Mapping[str, Any] | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = dict(details or {})

    def to_reply(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            err["details"] = self.details
        return err


def parse_command(name: str, payload: bytes) -> dict[str, Any]:
    """The command's arguments, or :class:`CommandError` (``bad-name``, ``too-large``,
    ``malformed``, ``unknown-command``). An empty payload means ``{}``."""
    if not NAME_RE.match(name):
        raise CommandError("bad-name", f"command name {name!r} is not a-z, 0-9 and '-'")
    if name not in KNOWN_COMMANDS:
        raise CommandError(
            "unknown-command", f"unknown command {name!r}; known: {', '.join(KNOWN_COMMANDS)}"
        )
    if len(payload) > MAX_COMMAND_BYTES:
        raise CommandError(
            "too-large", f"payload of {len(payload)} bytes exceeds {MAX_COMMAND_BYTES} bytes"
        )
    if not payload.strip():
        return {}
    try:
        doc = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CommandError("malformed", f"payload is not UTF-8 JSON: {err}") from err
    except RecursionError as err:
        raise CommandError("malformed", f"payload nests deeper than {MAX_NESTING} levels") from err
    if not isinstance(doc, dict):
        raise CommandError("malformed", f"payload must be a JSON object, got {type(doc).__name__}")
    if _depth_over(doc, MAX_NESTING):
        raise CommandError("malformed", f"payload nests deeper than {MAX_NESTING} levels")
    return doc


def _depth_over(doc: Any, limit: int) -> bool:
    """Whether ``doc`` nests objects/arrays deeper than ``limit`` (iterative: a hostile
    payload must not hit the interpreter's recursion limit in a handler)."""
    todo: list[tuple[Any, int]] = [(doc, 1)]
    while todo:
        value, depth = todo.pop()
        if isinstance(value, dict):
            value = list(value.values())
        if not isinstance(value, list):
            continue
        if depth > limit:
            return True
        todo.extend((v, depth + 1) for v in value)
    return False


def require(args: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    """``args[key]`` if present and of ``kind``, else :class:`CommandError` ``bad-argument``."""
    if key not in args:
        raise CommandError("bad-argument", f"missing argument {key!r}")
    value = args[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _kinds(kind)):
        raise CommandError("bad-argument", f"argument {key!r} has the wrong type: {value!r}")
    return value


def _kinds(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def parse_time(args: Mapping[str, Any], key: str) -> datetime:
    """An ISO 8601 time with its UTC offset (``2026-11-26T10:30:15+08:00``)."""
    text = require(args, key, str)
    try:
        return aware_time(text)
    except ValueError as err:
        raise CommandError("bad-argument", f"{key} {text!r} {err}") from err


class Dispatcher:
    """Runs one command and builds its reply; never raises."""

    def __init__(self, handlers: Mapping[str, Handler]) -> None:
        unknown = sorted(set(handlers) - set(KNOWN_COMMANDS))
        if unknown:
            raise ValueError(f"handlers for unknown commands: {', '.join(unknown)}")
        self.handlers = dict(handlers)

    def dispatch(self, name: str, payload: bytes) -> dict[str, Any]:
        reply: dict[str, Any] = {"command": name}
        try:
            args = parse_command(name, payload)
            handler = self.handlers.get(name)
            if handler is None:
                raise CommandError("unsupported", f"this station does not support {name!r}")
            result = handler(args)
        except CommandError as err:
            log.warning("command %s rejected: %s", name, err.message)
            reply.update(ok=False, error=err.to_reply())
        except Exception as err:  # a handler bug must not kill the command thread
            log.exception("command %s failed", name)
            reply.update(ok=False, error={"code": "internal", "message": str(err)})
        else:
            reply.update(ok=True, result=result)
        return reply


@dataclass(frozen=True)
class Command:
    """A command as it arrived on ``{root}/cmd/{name}``, with where its reply goes."""

    name: str
    payload: bytes
    response_topic: str | None
    correlation: bytes | None


class CommandRunner:
    """Runs platform commands one at a time, off paho's network thread (``uplink-cmd``).

    A handler may block (``set-config`` probes the broker for up to 30 s); :meth:`submit`, called
    from the network thread, never does: a command finding the queue full is not run and gets
    the ``busy`` reply at once. ``publish`` sends a reply (it drops it while there is no client).
    """

    def __init__(
        self,
        dispatcher: Dispatcher,
        topics: messages.Topics,
        publish: Callable[[messages.Message], None],
    ) -> None:
        self.dispatcher = dispatcher
        self._topics = topics
        self._publish = publish
        self._queue: queue.Queue[Command | None] = queue.Queue(COMMAND_QUEUE)
        self.handled = 0  # commands taken from the queue and dispatched

    def submit(self, cmd: Command) -> None:
        try:
            self._queue.put_nowait(cmd)
        except queue.Full:
            self._reply(cmd, messages.busy_reply(cmd.name))

    def run(self, stop: threading.Event) -> None:
        """The thread's loop: until ``stop`` is set and :meth:`close` has woken it."""
        while not stop.is_set():
            try:
                cmd = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            if cmd is None:
                return
            try:
                self.handled += 1
                self._reply(cmd, self.dispatcher.dispatch(cmd.name, cmd.payload))
            except Exception:
                log.exception("uplink: command %s failed", cmd.name)

    def close(self) -> None:
        """Wake the thread so it sees the stop event now, not at its next poll."""
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)

    def refuse(self, cmd: Command, code: str, message: str) -> None:
        """Answer ``cmd`` with an error without running it (an unsigned or replayed command,
        a response topic outside the station's root); never blocks."""
        log.warning("command %s refused (%s): %s", cmd.name, code, message)
        self._reply(
            cmd, {"command": cmd.name, "ok": False, "error": {"code": code, "message": message}}
        )

    def _reply(self, cmd: Command, reply: dict[str, Any]) -> None:
        topic = cmd.response_topic
        if topic is not None and not self._topics.reply_topic_allowed(topic):
            topic = None  # only under {root}/reply/: the default reply topic instead
        self._publish(
            messages.command_reply(
                self._topics,
                cmd.name,
                reply,
                response_topic=topic,
                correlation=cmd.correlation,
            )
        )


def builtin_handlers(
    *, station_id: str, db: Database, now: Callable[[], datetime], wake: Callable[[], None]
) -> dict[str, Handler]:
    """The uplink's own commands: ``ping``, and ``resend`` (``{"from": …, "to": …}``, ISO 8601
    with offsets), which sends the event records created in that range again, acked or not;
    ``wake`` tells the sender."""

    def ping(args: dict[str, Any]) -> dict[str, Any]:
        return {
            "pong": True,
            "station_id": station_id,
            "time": now().isoformat(timespec="milliseconds"),
            "software_version": __version__,
        }

    def resend(args: dict[str, Any]) -> dict[str, Any]:
        since = parse_time(args, "from")
        until = parse_time(args, "to")
        if until < since:
            raise CommandError("bad-argument", "'to' is before 'from'")
        with db.write() as conn:
            n = requeue_kept_events(conn, since, until)
        wake()
        return {"requeued": n}

    return {"ping": ping, "resend": resend}


def set_config(
    text: str,
    *,
    current_text: str,
    validate: Callable[[str], list[str]],
    protected: Callable[[str], list[str]],
    can_connect: Callable[[str, float], bool],
    apply: Callable[[str], None],
    backup_dir: Path,
    stamp: str,
    before_apply: Callable[[str, Path], None] | None = None,
    timeout_s: float = 30.0,
    keep_backups: int = 20,
) -> dict[str, Any]:
    """Replace the station config with ``text`` once it is proven to reach the broker.

    1. ``validate(text)`` returns the problems (empty: valid); any → ``CommandError("invalid")``.
    2. ``protected(text)`` returns the protected keys it would change (data_dir, signing key,
       station id, legal parameters, the platform key); any → ``CommandError("protected")``.
    3. ``can_connect(text, timeout_s)`` must reach the broker with the new settings *before*
       anything is written, else ``CommandError("unreachable")``: a kill during the probe
       leaves the old file, the one ``run`` reads.
    4. ``current_text`` is written to ``backup_dir/config-{stamp}.toml`` (the newest
       ``keep_backups`` are kept); ``before_apply(text, backup)`` runs next (the station
       notes the trial there, so a start-up on the new file can fall back to the backup).
    5. ``apply(text)`` installs it; a failure to back up or write is
       ``CommandError("apply-failed")`` with the old file restored.

    Nothing is changed by a refused command. ``stamp`` names the backup (the caller's clock,
    e.g. ``20261126T103015``).
    """
    _refuse_unproven(text, validate, protected, can_connect, timeout_s)
    backup = _back_up(current_text, backup_dir, stamp, keep_backups)
    try:
        if before_apply is not None:
            before_apply(text, backup)
        apply(text)
    except Exception as err:
        # the write is atomic, so the old file is most likely still there; make sure
        try:
            apply(current_text)
        except Exception as restore_err:
            raise CommandError(
                "apply-failed",
                f"could not apply the config: {err}; restoring the previous one failed too:"
                f" {restore_err}",
            ) from err
        raise CommandError("apply-failed", f"could not apply the config: {err}") from err
    log.warning("set-config: new config applied; previous one kept as %s", backup.name)
    return {"applied": True, "backup": backup.name}


def _refuse_unproven(
    text: str,
    validate: Callable[[str], list[str]],
    protected: Callable[[str], list[str]],
    can_connect: Callable[[str, float], bool],
    timeout_s: float,
) -> None:
    """Steps 1–3 of :func:`set_config`: raise unless ``text`` is valid, leaves the protected
    keys alone and reaches the broker."""
    problems = validate(text)
    if problems:
        raise CommandError(
            "invalid", f"config rejected: {len(problems)} problem(s)", {"problems": problems}
        )
    changed = protected(text)
    if changed:
        raise CommandError(
            "protected",
            "a remote config may not change the evidence's identity or the legal parameters: "
            + ", ".join(changed)
            + " (change them on the station; the audit log records it)",
            {"keys": changed},
        )
    if not can_connect(text, timeout_s):
        log.error("set-config: broker unreachable with the new config; nothing changed")
        raise CommandError(
            "unreachable",
            f"the broker was not reachable within {timeout_s:g} s with the new config;"
            " nothing was changed",
        )


def _back_up(current_text: str, backup_dir: Path, stamp: str, keep: int) -> Path:
    """``backup_dir/config-{stamp}.toml`` (``-1``, ``-2`` … when taken), the newest ``keep``
    kept. A station that cannot keep its old config does not take a new one:
    ``CommandError("apply-failed")``, nothing changed."""
    try:
        backup_dir.mkdir(parents=True, exist_ok=True)
        backup = backup_dir / f"config-{stamp}.toml"
        n = 1
        while backup.exists():
            backup = backup_dir / f"config-{stamp}-{n}.toml"
            n += 1
        backup.write_text(current_text, encoding="utf-8")
        for old in sorted(backup_dir.glob("config-*.toml"))[:-keep]:
            old.unlink(missing_ok=True)
    except OSError as err:
        raise CommandError(
            "apply-failed", f"could not back up the current config, nothing changed: {err}"
        ) from err
    return backup


def set_config_handler(
    *,
    read_current: Callable[[], str],
    validate: Callable[[str], list[str]],
    protected: Callable[[str], list[str]],
    can_connect: Callable[[str, float], bool],
    apply: Callable[[str], None],
    backup_dir: Path,
    now: Callable[[], datetime],
    before_apply: Callable[[str, Path], None] | None = None,
    timeout_s: float = 30.0,
) -> Handler:
    """The ``set-config`` command handler: ``{"config": "<whole config file text>"}`` →
    :func:`set_config`. ``now`` is the station clock's ``now`` (names the backup)."""

    def handle(args: dict[str, Any]) -> dict[str, Any]:
        text = require(args, "config", str)
        return set_config(
            text,
            current_text=read_current(),
            validate=validate,
            protected=protected,
            can_connect=can_connect,
            apply=apply,
            backup_dir=backup_dir,
            stamp=now().strftime("%Y%m%dT%H%M%S"),
            before_apply=before_apply,
            timeout_s=timeout_s,
        )

    return handle
