"""The import contract: dependencies point one way, and the fakes stay out of production.

Read from the source with `ast`, so a forbidden import fails here even if nothing runs it:

- sources, archive and registry import nothing from runtime, daemon, control, ops or cli;
- the archive imports nothing from the sources (it knows no network);
- nothing but cli (lazily, for `sfmd fakeapi`), demo and the fakes themselves imports `fake`;
- nothing imports cli;
- cluster mode (`sfmd.cluster`) is imported only by the daemon and cli, which start it when
  `[cluster] nats_url` is set; it imports nothing of the byte path or the control path's upper
  layers; and nats-py is imported by nothing else, so a single host never loads it;
- between packages there is no cycle.

`test_the_checker_finds_a_forbidden_import` shows each rule failing on a made-up module.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "sfmd"

#: (importer prefix, imported prefix) pairs that must never occur.
FORBIDDEN = [
    *[
        (low, high)
        for low in ("sfmd.sources", "sfmd.archive", "sfmd.registry")
        for high in ("sfmd.runtime", "sfmd.daemon", "sfmd.control", "sfmd.ops", "sfmd.cli")
    ],
    ("sfmd.archive", "sfmd.sources"),
    ("sfmd.status", "sfmd."),
    ("sfmd.errors", "sfmd."),
    ("sfmd.logline", "sfmd."),  # sfmctl renders the log with it: it stays light
    *[
        (low, "sfmd.cluster")
        for low in (
            "sfmd.sources", "sfmd.archive", "sfmd.registry", "sfmd.runtime", "sfmd.control",
            "sfmd.ops", "sfmd.fake", "sfmd.config", "sfmd.credentials", "sfmd.logs",
            "sfmd.durable", "sfmd.locks", "sfmd.demo", "sfmd.ctl",
        )
    ],
    *[
        ("sfmd.cluster", high)
        for high in (
            "sfmd.sources", "sfmd.archive", "sfmd.runtime", "sfmd.daemon", "sfmd.control",
            "sfmd.ops",
        )
    ],
]
#: Only cluster mode talks to NATS.
NATS_USERS = ("sfmd.cluster",)
#: Who may import the fakes.
FAKE_USERS = ("sfmd.fake", "sfmd.demo", "sfmd.cli")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(source: str, module: str) -> Iterator[str]:
    """Every sfmd module `source` imports (absolute names), wherever the import stands."""
    package = module if module.count(".") == 0 else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1],
                                 *([base] if base else [])])
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".") or (
        prefix.endswith(".") and name.startswith(prefix)
    )


def problems(modules: dict[str, str]) -> list[str]:
    """The import contract's breaches in `modules` (name → source)."""
    found = []
    for module, source in sorted(modules.items()):
        for imported in set(imports_of(source, module)):
            if within(imported, "nats") and not any(within(module, u) for u in NATS_USERS):
                found.append(f"{module} imports {imported}: only sfmd.cluster may")
            if not imported.startswith("sfmd"):
                continue
            for low, high in FORBIDDEN:
                if within(module, low) and within(imported, high):
                    found.append(f"{module} imports {imported}")
            if within(imported, "sfmd.fake") and not any(within(module, u) for u in FAKE_USERS):
                found.append(f"{module} imports {imported}: only cli, demo and tests may")
            if within(imported, "sfmd.cli") and module != "sfmd.__main__":
                found.append(f"{module} imports {imported}: nothing imports cli")
    return found + cycles(modules)


def top(name: str) -> str:
    """The package a module belongs to, for the cycle check (sfmd.sources.twitter.v2 →
    sfmd.sources)."""
    return ".".join(name.split(".")[:2])


def cycles(modules: dict[str, str]) -> list[str]:
    edges: dict[str, set[str]] = {}
    for module, source in modules.items():
        for imported in imports_of(source, module):
            if imported.startswith("sfmd.") and top(imported) != top(module):
                if top(imported) in {top(m) for m in modules}:
                    edges.setdefault(top(module), set()).add(top(imported))
    found = []
    for start in sorted(edges):
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in sorted(edges.get(node, ())):
                if nxt == start:
                    found.append("cycle: " + " -> ".join([*path, start]))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
    return sorted(set(found))


def sfmd_modules() -> dict[str, str]:
    return {module_name(p): p.read_text() for p in PACKAGE.rglob("*.py")}


def test_the_import_contract_holds() -> None:
    assert problems(sfmd_modules()) == []


@pytest.mark.parametrize(
    ("module", "source", "words"),
    [
        ("sfmd.sources.twitter.stream", "from sfmd.daemon import app", "imports sfmd.daemon"),
        ("sfmd.archive.writer", "import sfmd.control.api", "imports sfmd.control"),
        ("sfmd.registry.spec", "from sfmd.runtime import tasks", "imports sfmd.runtime"),
        ("sfmd.archive.writer", "from sfmd.sources.twitter import framing", "imports sfmd.sources"),
        ("sfmd.runtime.tasks", "from sfmd.fake.twitter import V1API", "only cli, demo"),
        ("sfmd.daemon.app", "def f():\n    from sfmd.cli import main", "nothing imports cli"),
        ("sfmd.status", "from sfmd.logs import get_logger", "imports sfmd.logs"),
        ("sfmd.runtime.tasks", "from sfmd.cluster import lease", "imports sfmd.cluster"),
        ("sfmd.cluster.lease", "from sfmd.runtime import tasks", "imports sfmd.runtime"),
        ("sfmd.archive.writer", "import nats", "only sfmd.cluster may"),
    ],
)
def test_the_checker_finds_a_forbidden_import(module: str, source: str, words: str) -> None:
    found = problems({**sfmd_modules(), module: source})
    assert any(words in problem for problem in found), found


def test_the_checker_finds_a_cycle_between_packages() -> None:
    modules = sfmd_modules()
    modules["sfmd.ops.systemd"] += "\nfrom sfmd.daemon.app import Daemon\n"
    assert any("cycle" in problem and "sfmd.ops" in problem for problem in problems(modules))


#: Everything `sfmd run` and `sfmd stream` import (without a nats_url), for a fresh
#: interpreter to load before the code a test gives `after_the_daemons_imports`.
DAEMON_IMPORTS = (
    "import os, sys; from sfmd import cli; cli.build_parser(); "
    "import sfmd.daemon.app, sfmd.control.api, sfmd.runtime.tasks, sfmd.config; "
)


def after_the_daemons_imports(code: str, env: dict[str, str] | None = None) -> str:
    """What `code` prints, run in a fresh interpreter after `DAEMON_IMPORTS`."""
    done = subprocess.run([sys.executable, "-c", DAEMON_IMPORTS + code], capture_output=True,
                          text=True, check=True, env=env)
    return done.stdout


def test_sfmd_run_and_stream_never_load_the_fakes() -> None:
    printed = after_the_daemons_imports(
        "print(sorted(m for m in sys.modules if m.startswith('sfmd.fake')))")
    assert printed.strip() == "[]"


def test_a_single_host_never_loads_nats_or_cluster_mode() -> None:
    printed = after_the_daemons_imports(
        "print(sorted(m for m in sys.modules if m == 'nats' or m.startswith(('nats.', "
        "'sfmd.cluster'))))")
    assert printed.strip() == "[]"


def test_the_daemon_never_loads_rich_but_others_still_may() -> None:
    """structlog would import rich (installed here, by the test tools) for a console sfmd
    does not use: 8 MB of the daemon's memory."""
    printed = after_the_daemons_imports(
        "print('rich' in sys.modules); import rich.console; print('rich' in sys.modules)")
    assert printed.split() == ["False", "True"]


def test_sfmctl_never_loads_structlog() -> None:
    """sfmctl is run often (by people and by monitoring): it stays light."""
    code = "import sys; from sfmd import ctl; print('structlog' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_the_daemon_loads_no_module_only_a_rare_path_needs() -> None:
    """Each of these cost the daemon resident memory at every start for a path most daemons
    never take (2.3 MB together): frozenlist's C++ form maps libstdc++; sfmctl's module,
    `xmlrpc.client` (supervisord, process streams only) and `difflib` (a mistyped key).
    frozenlist's switch is not left in the environment for what sfmd starts."""
    printed = after_the_daemons_imports(
        "import frozenlist; "
        "print(sorted(m for m in ('frozenlist._frozenlist', 'sfmd.ctl', 'xmlrpc.client', "
        "'difflib', 'decimal') if m in sys.modules), frozenlist.FrozenList.__module__, "
        "'FROZENLIST_NO_EXTENSIONS' in os.environ)",
        env={k: v for k, v in os.environ.items() if k != "FROZENLIST_NO_EXTENSIONS"},
    )
    assert printed.split() == ["[]", "frozenlist", "False"]
