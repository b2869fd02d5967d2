"""The house rules of the code base (docs/DEVELOPING.md), checked on the source itself.

- only ``agent/store/`` speaks SQL or opens the station database;
- nothing under ``drivers/`` imports ``agent``;
- no import circles between modules (lazy imports inside functions count too);
- every command exits through the one exit-code table of ``agent/commands/_common.py``;
- every command and the daemon find the config and the data directory the same way.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.cli import main
from agent.commands import _common

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("agent", "drivers")
SQL = re.compile(
    r"^\s*(SELECT\s|INSERT\s+(OR\s+\w+\s+)?INTO\s|UPDATE\s+\w+\s+SET\s|DELETE\s+FROM\s|"
    r"CREATE\s+(TABLE|INDEX|UNIQUE)|DROP\s+(TABLE|INDEX|TRIGGER|VIEW)\s|PRAGMA\s|"
    r"WITH\s+\w+\s+AS\s)",
    re.IGNORECASE,
)


def _sources() -> Iterator[tuple[str, Path, ast.Module]]:
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts.pop()
            yield ".".join(parts), path, ast.parse(path.read_text(encoding="utf-8"))


def _type_checking_nodes(tree: ast.Module) -> set[int]:
    """ids of nodes inside ``if TYPE_CHECKING:`` blocks (never imported at run time)."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                skip.update(id(n) for n in ast.walk(child))
    return skip


def _imports(module: str, tree: ast.Module, known: set[str]) -> set[str]:
    skip = _type_checking_nodes(tree)
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                if sub in known:
                    out.add(sub)
                elif node.module in known:
                    out.add(node.module)
    out.discard(module)
    return out


def test_only_the_store_speaks_sql_or_opens_the_database() -> None:
    offenders: list[str] = []
    for module, path, tree in _sources():
        if module.startswith("agent.store"):
            continue
        rel = path.relative_to(ROOT)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if SQL.match(node.value):
                    offenders.append(f"{rel}:{node.lineno}: SQL {node.value[:40]!r}")
            elif isinstance(node, ast.Attribute) and node.attr in (
                "execute",
                "executemany",
                "executescript",
                "connect",
            ):
                base = ast.unparse(node.value)
                if node.attr != "connect" or base == "sqlite3":
                    offenders.append(f"{rel}:{node.lineno}: {base}.{node.attr}()")
    assert offenders == []


def test_drivers_never_import_agent() -> None:
    offenders = []
    for module, path, tree in _sources():
        if not module.startswith("drivers"):
            continue
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                if name == "agent" or name.startswith("agent."):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {name}")
    assert offenders == []


def test_no_import_circles() -> None:
    trees = {m: t for m, _, t in _sources()}
    known = set(trees)
    graph = {m: _imports(m, t, known) for m, t in trees.items()}
    circles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 visiting, 2 done
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                circles.append([*stack[stack.index(n) :], n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert circles == []


def test_every_command_exits_through_the_one_table() -> None:
    table = {v for k, v in vars(_common).items() if k.startswith("EX_") and isinstance(v, int)}
    assert table == {0, 1, 2, 66, 69, 75, 78, 130}
    offenders = []
    for module, path, tree in _sources():
        if not (module.startswith("agent.commands") or module in ("agent.cli", "agent.config")):
            continue
        if module == "agent.commands._common":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id.startswith("EX_") for t in node.targets
            ):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: defines an exit code")
            value = None
            if isinstance(node, ast.Return):
                value = node.value
            elif isinstance(node, ast.Call) and ast.unparse(node.func) in (
                "SystemExit",
                "sys.exit",
            ):
                value = node.args[0] if node.args else None
            if (
                isinstance(value, ast.Constant)
                and isinstance(value.value, int)
                and not isinstance(value.value, bool)
                and value.value != 0
            ):
                offenders.append(
                    f"{path.relative_to(ROOT)}:{node.lineno}: exits {value.value} by number"
                )
    assert offenders == []


def test_help_documents_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--help"], ["verify", "--help"], ["probe", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        out = capsys.readouterr().out
        assert "exit codes: 0 ok, 1 the check failed, 2 usage" in " ".join(out.split())


def test_keygen_writes_where_the_daemon_reads_and_every_command_finds_the_same_data_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from agent.config import load_config
    from agent.store.keys import signing_key_path

    config = tmp_path / "etc" / "station.toml"
    config.parent.mkdir()
    demo = (ROOT / "firmware_config" / "examples" / "demo.toml").read_text(encoding="utf-8")
    text = re.sub(r"(?m)^data_dir\s*=.*$", "", demo)
    text = text.replace("[station]\n", '[station]\ndata_dir = "../elsewhere"\n', 1)
    config.write_text(text, encoding="utf-8")
    loaded = load_config(config)
    daemon_dir = loaded.data_dir(None)
    assert daemon_dir == (tmp_path / "elsewhere").resolve()

    assert main(["keygen", "--config", str(config)]) == 0
    assert signing_key_path(loaded.evidence, daemon_dir).is_file()
    where = _common.locate(config, None)
    assert where.data_dir == daemon_dir and where.config_file == config
    capsys.readouterr()
    # no database yet: every reading command says so (66), about the daemon's directory
    for command in ("status", "events", "verify"):
        assert main([command, "--config", str(config)]) == _common.EX_NOINPUT
        assert str(daemon_dir) in capsys.readouterr().err


MAX_FUNCTION_LINES = 60
WHY_LONG = "# long:"  # a comment saying why a function stays whole


def test_functions_are_short_or_say_why() -> None:
    long: set[str] = set()
    for _, path, tree in _sources():
        lines = path.read_text(encoding="utf-8").splitlines()
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            end = node.end_lineno or node.lineno
            if end - node.lineno + 1 <= MAX_FUNCTION_LINES:
                continue
            body = lines[node.lineno - 1 : end]
            if not any(WHY_LONG in line.lower() for line in body):
                long.add(f"{path.relative_to(ROOT).as_posix()}:{node.name}")
    assert long == set(), "split them, or say why with '# long: …'"
