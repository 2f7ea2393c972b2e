"""`sfmd`: the command line. Thin by design: parse, load, hand over, turn errors into exits."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sfmd import __version__, lean  # noqa: F401  # lean first: see lean
from sfmd.archive.coverage import keep_alive
from sfmd.argtypes import moment
from sfmd.config import CONFIG_ENV, DEFAULT_CONFIG, Config, ConfigError, load_config
from sfmd.control.server import ControlServer
from sfmd.credentials import (
    Credential,
    CredentialsError,
    credentials_problems,
    load_credentials,
)
from sfmd.daemon import allocator
from sfmd.daemon.app import Daemon, StartupError
from sfmd.locks import CredentialBusy
from sfmd.logs import LogFiles, get_logger, setup_logging
from sfmd.ops.confs import ConfError
from sfmd.ops.systemd import Notifier
from sfmd.registry import Mode, Registry, RegistryError, StreamSpec
from sfmd.runtime.processes import ProcessStreams, write_status_file
from sfmd.runtime.tasks import StreamRunner, new_session, source_context
from sfmd.sources import source_of

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
DESCRIPTION = (
    "sfmd collects Twitter, Bluesky and Mastodon streams into clock-rotated files with a fixity "
    "manifest. `sfmd run` is the daemon (manage its streams with sfmctl); the other commands "
    "check, audit and package what it stored."
)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["fakeapi"]:
        # Handed over whole: the fakes are loaded only for this command, never by `sfmd run`.
        from sfmd.fake.cli import main as fakeapi_main

        return fakeapi_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except StartupError as e:
        print(f"sfmd: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sfmd", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"sfmd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="the daemon: every stream, and the control socket")
    p.add_argument("--config", required=True, type=Path, help="the sfmd TOML config file")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("stream", help="run one registry stream in the foreground")
    p.add_argument("name", help="the stream's name in the registry")
    p.add_argument("--config", required=True, type=Path, help="the sfmd TOML config file")
    p.set_defaults(func=cmd_stream)

    p = sub.add_parser(
        "supervisor-conf", help="print the supervisor [program:...] conf of an isolated stream"
    )
    p.add_argument("name", nargs="?", help="the stream's name in the registry")
    p.add_argument("--all", action="store_true", help="one conf per process-isolated stream")
    p.add_argument("--config", type=Path, default=None, help=CONFIG_HELP)
    p.set_defaults(func=cmd_supervisor_conf)

    # Listed for --help only: main() hands `sfmd fakeapi ...` to sfmd.fake.cli before parsing.
    sub.add_parser("fakeapi", help="run the bundled simulated streaming API (see --help there)")

    p = sub.add_parser(
        "check", help="check the config, credentials and registry without starting anything",
        description="Like `nginx -t`: load and check the config file, the credentials file "
        "(its mode too) and the stream registry; report every problem found. Exit 0 when "
        "sfmd run would start with them, 1 otherwise.",
    )
    p.add_argument("--config", type=Path, default=None, help=CONFIG_HELP)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser(
        "verify", help="the fixity audit: every manifest entry's file exists as described",
        description="Check every stream's files against its manifest: sha256, byte and line "
        "counts, complete gzip; nothing published missing from the manifest; no torn manifest "
        "line; no old .part while no sfmd runs the stream. Exit 0 clean, 1 with problems.",
    )
    p.add_argument("names", nargs="*", metavar="NAME", help="only these streams (default: all)")
    p.add_argument("--config", type=Path, default=None, help=CONFIG_HELP)
    p.add_argument("--json", action="store_true", help="the report as JSON")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="files read at once (default: cores + 2, at most 8)")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser(
        "bag", help="a BagIt bag of a stream's files for a period",
        description="Copy the stream's published files whose interval begins in "
        "[--since, --until), with their manifest lines, into OUT as a BagIt bag (sha256 and "
        "sha512 manifests; bag-info.txt sums up coverage and provenance).",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("out", type=Path, metavar="OUT", help="a new or empty folder")
    p.add_argument("--since", required=True, type=moment, metavar="ISO")
    p.add_argument("--until", required=True, type=moment, metavar="ISO")
    p.add_argument("--config", type=Path, default=None, help=CONFIG_HELP)
    p.set_defaults(func=cmd_bag)

    p = sub.add_parser("demo", help="a short demo against the bundled fake API, in a temp dir")
    p.add_argument("--seconds", type=float, default=8.0, help="how long to stream (default 8)")
    p.add_argument("--keep", action="store_true",
                   help="keep the temp folder (files, manifests, log) instead of removing it")
    p.add_argument("--dir", type=Path, default=None, metavar="DIR",
                   help="run in DIR (a new or empty folder, kept) instead of a temp folder")
    p.set_defaults(func=cmd_demo)
    return parser


# -- loading -----------------------------------------------------------------------------


def load_all(config_path: Path) -> tuple[Config, dict[str, Credential], Registry]:
    """Config, credentials and registry, or one StartupError that says what to fix."""
    try:
        config = load_config(config_path)
        credentials = load_credentials(config.twitter.credentials_file)
        registry = Registry.load(config.daemon.state_dir, credentials=credentials.keys())
    except (ConfigError, CredentialsError, RegistryError) as e:
        raise StartupError(str(e)) from None
    return config, credentials, registry


def find_stream(
    registry: Registry, credentials: dict[str, Credential], name: str
) -> tuple[StreamSpec, Credential | None]:
    try:
        spec = registry.get(name)
    except KeyError:
        known = ", ".join(s.name for s in registry.list()) or "none"
        raise StartupError(
            f"no stream named '{name}' in the registry {registry.path} (known: {known})"
        ) from None
    if spec.mode is Mode.SHARED:
        raise StartupError(
            f"stream '{name}' shares one connection with the other streams on its credential "
            f"({spec.slot}); shared connections run inside `sfmd run`, not as a process of "
            "their own"
        )
    problem = source_of(spec).credential_problem(spec, credentials)
    if problem:
        raise StartupError(problem)
    return spec, credentials.get(spec.credential)


# -- sfmd run ----------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as e:
        raise StartupError(str(e)) from None
    return asyncio.run(run_daemon(config))


def open_log(path: Path, log_format: str) -> LogFiles:
    """The daemon's log, or a StartupError saying why it cannot be written."""
    try:
        return setup_logging(path, log_format=log_format)
    except OSError as e:
        raise StartupError(f"cannot write the log file {path}: {e.strerror}; fix the "
                           "folder's owner or mode, or set daemon.log_dir") from None


def raise_file_limit() -> None:
    """Lift the soft open-files limit to the hard one: each stream holds three or four
    descriptors (socket, folder lock, credential lock, and a busy stream's open .part), and
    1,024 is a common soft default."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            target = soft
        get_logger().info("open_files_limit", soft=target, hard=hard)


async def run_daemon(config: Config) -> int:
    """The daemon until SIGTERM/SIGINT; then stop every stream, publish, exit 0.

    The control socket is claimed before the log is opened: a second daemon on the same
    config is refused (on stderr) without writing a line into the first one's log.
    """
    daemon = Daemon(config)
    stop = StopSignal()
    install_stop_handlers(stop)  # before the socket shows: a stop from then on is clean
    control = ControlServer(daemon, config.daemon.control_socket, config.daemon.socket_mode)
    control.claim()
    try:
        log_files = open_log(config.daemon.log_dir / "sfmd.log", config.daemon.log_format)
    except StartupError:
        control.release()
        raise
    raise_file_limit()
    allocator.cap_arenas()  # before the worker threads start: see allocator
    notifier = Notifier.from_env()
    reloads: set[asyncio.Task[None]] = set()

    async def reload_signalled() -> None:
        notifier.reloading()
        try:
            await daemon.reload_quietly()
        finally:
            notifier.ready(daemon.views.status_line())

    def reload() -> None:
        # SIGHUP: the logs were reopened; now the credentials, as `sfmctl reload` does.
        task = asyncio.create_task(reload_signalled())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    install_hup_handler(log_files, on_hup=reload)

    async def stop_on_signal() -> None:
        await stop.wait()
        get_logger().info("signal_received", signal=stop.signal_name,
                          action="stopping every stream")
        daemon.request_stop()

    def started() -> None:
        # The log is JSON for machines; a person starting sfmd by hand learns where things
        # are, once it has started (a refused start prints only its reason, on stderr).
        print(f"sfmd {__version__}: logging to {config.daemon.log_dir / 'sfmd.log'}, control "
              f"socket {config.daemon.control_socket}", flush=True)

    waiter = asyncio.create_task(stop_on_signal())
    try:
        await daemon.serve(control, notifier, started=started)
    finally:
        waiter.cancel()
    return EXIT_OK


# -- sfmd stream -------------------------------------------------------------------------


def cmd_stream(args: argparse.Namespace) -> int:
    config, credentials, registry = load_all(args.config)
    spec, credential = find_stream(registry, credentials, args.name)
    log_files = setup_logging(
        config.daemon.log_dir / f"stream-{spec.name}.log", log_format=config.daemon.log_format
    )
    return asyncio.run(run_stream(config, spec, credential, log_files))


async def run_stream(
    config: Config, spec: StreamSpec, credential: Credential | None, log_files: LogFiles
) -> int:
    """One stream until SIGTERM/SIGINT; then publish the open file and exit 0."""
    log = get_logger(stream=spec.name)
    stop = StopSignal()
    install_signal_handlers(stop, log_files)
    alive = asyncio.create_task(
        keep_alive(config.daemon.data_dir, config.timing.flush_interval)
    )
    async with new_session() as session:
        runner = StreamRunner(spec, credential, config, source_context(config, session))
        try:
            await runner.start()
        except CredentialBusy as e:
            log.error("credential_busy", error=str(e))
            raise StartupError(str(e)) from None
        reporter = asyncio.create_task(report_status(config, runner))
        await stop.wait()
        log.info("shutdown", reason="signal", signal=stop.signal_name)
        reporter.cancel()
        await runner.stop()
        write_status_file(config.daemon.state_dir, spec.name, runner.status().to_dict())
    alive.cancel()
    return EXIT_OK


async def report_status(config: Config, runner: StreamRunner) -> None:
    """Publish this stream's counters for the daemon (isolated streams live in another process)."""
    while True:
        write_status_file(config.daemon.state_dir, runner.spec.name, runner.status().to_dict())
        await asyncio.sleep(config.timing.status_interval)


class StopSignal(asyncio.Event):
    """Set by SIGTERM or SIGINT, remembering which (the log names the signal that stopped
    sfmd: a supervisor's stop and a person's Ctrl-C read differently afterwards)."""

    signal_name: str | None = None

    def received(self, sig: signal.Signals) -> None:
        if self.signal_name is None:
            self.signal_name = sig.name
        self.set()


def install_signal_handlers(
    stop: StopSignal, log_files: LogFiles, on_hup: Callable[[], None] | None = None
) -> None:
    """SIGTERM/SIGINT stop; SIGHUP reopens the log files (logrotate's postrotate relies on
    it), then calls `on_hup` (the daemon reloads its credentials)."""
    install_stop_handlers(stop)
    install_hup_handler(log_files, on_hup)


def install_stop_handlers(stop: StopSignal) -> None:
    """SIGTERM/SIGINT set `stop` instead of killing the process outright."""
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.received, signal.SIGTERM)
    loop.add_signal_handler(signal.SIGINT, stop.received, signal.SIGINT)


def install_hup_handler(log_files: LogFiles, on_hup: Callable[[], None] | None = None) -> None:
    """SIGHUP reopens the log files, then calls `on_hup`."""
    log = get_logger()

    def hup() -> None:
        log_files.reopen()
        log.info("logs_reopened", signal="SIGHUP")
        if on_hup is not None:
            on_hup()

    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, hup)


# -- sfmd supervisor-conf ----------------------------------------------------------------


def cmd_supervisor_conf(args: argparse.Namespace) -> int:
    """Print confs for people who manage supervisor with their own tooling."""
    if bool(args.name) == bool(args.all):
        print("sfmd supervisor-conf: give a stream NAME or --all", file=sys.stderr)
        return EXIT_USAGE
    config, credentials, registry = load_all(config_path(args.config))
    processes = ProcessStreams(config)
    if args.all:
        specs = [s for s in registry.list() if s.mode is Mode.PROCESS]
        if not specs:
            print("sfmd supervisor-conf: no stream has isolation = \"process\"; nothing to "
                  "print", file=sys.stderr)
    else:
        specs = [find_stream(registry, credentials, args.name)[0]]
        if specs[0].mode is not Mode.PROCESS:
            print(f"sfmd supervisor-conf: stream {args.name!r} runs as a task in sfmd run "
                  "(isolation = \"task\"); this is the conf it would take as a process, and "
                  "sfmd does not use it", file=sys.stderr)
    try:
        print("\n".join(processes.render(spec) for spec in specs), end="")
    except ConfError as e:
        raise StartupError(str(e)) from None
    return EXIT_OK


# -- sfmd verify, sfmd bag -------------------------------------------------------------------

CONFIG_HELP = "the sfmd TOML config file (default: $SFMD_CONFIG, else /etc/sfm/sfmd.toml)"


def config_path(given: Path | None) -> Path:
    """--config, else $SFMD_CONFIG, else the path the shipped units use."""
    return given or Path(os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)


def config_for_files(path: Path | None) -> Config:
    """The config of commands that read the files, not the daemon."""
    try:
        return load_config(config_path(path))
    except ConfigError as e:
        raise StartupError(str(e)) from None


def cmd_check(args: argparse.Namespace) -> int:
    """What `sfmd run` would refuse at start-up, and what it would start but mark failed."""
    path = config_path(args.config)
    config = config_for_files(path)
    try:
        credentials = load_credentials(config.twitter.credentials_file)
        registry: Any = (asyncio.run(_cluster_registry(config)) if config.cluster.nats_url
                         else Registry.load(config.daemon.state_dir))
    except (CredentialsError, RegistryError) as e:
        raise StartupError(str(e)) from None
    problems = credentials_problems(
        credentials, config.twitter.default_credential, config.twitter.credentials_file
    )
    for spec in registry.list():
        problem = source_of(spec).credential_problem(spec, credentials) if spec.active else None
        if problem:
            problems.append(f"stream {spec.name!r} would be marked failed: {problem}")
    for problem in problems:
        print(f"sfmd check: {problem}", file=sys.stderr)
    print(f"{path}: {'ok' if not problems else f'{len(problems)} problems'} "
          f"({len(credentials)} credentials, {len(registry)} streams)")
    return EXIT_OK if not problems else EXIT_FAILED


async def _cluster_registry(config: Config) -> object:
    """Cluster mode: the registry as every host reads it, from the NATS bucket (which also
    proves NATS answers); StartupError with the reason if it does not."""
    from sfmd.cluster.connection import connect
    from sfmd.cluster.errors import ClusterError
    from sfmd.cluster.kvregistry import KVRegistry

    try:
        client = await connect(config.cluster.nats_url, config.cluster.host_id,
                               connect_timeout=config.timing.connect_timeout)
    except ClusterError as e:
        raise StartupError(str(e)) from None
    try:
        async with asyncio.timeout(config.timing.connect_timeout * 2):
            return await KVRegistry.open(client.jetstream())
    except ClusterError as e:
        raise StartupError(str(e)) from None
    except Exception as e:  # JetStream off, a timeout: nats-py's errors name no setting
        raise StartupError(
            f"NATS answered but its registry bucket could not be read ({type(e).__name__}); "
            "is JetStream on (nats-server -js)?"
        ) from None
    finally:
        await client.close()


def cmd_verify(args: argparse.Namespace) -> int:
    from sfmd.archive.audit import audit

    config = config_for_files(args.config)
    result = audit(
        config.daemon.data_dir, args.names or None,
        save_interval=config.daemon.save_interval, workers=args.workers,
    )
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        for problem in result.problems:
            print(f"{problem.stream}  {problem.file}  {problem.problem}")
        verdict = "clean" if result.clean else f"{len(result.problems)} problems"
        print(f"{result.files} files ({result.bytes / 1e9:.2f} GB) of {result.streams} streams "
              f"checked in {result.seconds:.1f} s: {verdict}")
    return EXIT_OK if result.clean else EXIT_FAILED


def cmd_bag(args: argparse.Namespace) -> int:
    from sfmd.archive import ArchiveError
    from sfmd.archive.bag import make_bag

    config = config_for_files(args.config)
    try:
        bag = make_bag(config.daemon.data_dir, args.name, args.since, args.until, args.out)
    except ArchiveError as e:
        raise StartupError(str(e)) from None
    files = len([p for p in bag.payload_files() if not p.endswith("manifest.jsonl")])
    print(f"{args.out}: a BagIt bag of {files} files of stream {args.name!r}")
    return EXIT_OK


# -- sfmd demo ---------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    from sfmd.demo import run_demo

    if args.dir is not None and args.dir.exists() and any(args.dir.iterdir()):
        print(f"sfmd demo: {args.dir} is not empty; give a new or empty folder", file=sys.stderr)
        return EXIT_USAGE
    return asyncio.run(run_demo(seconds=args.seconds, base=args.dir, keep=args.keep))


if __name__ == "__main__":
    sys.exit(main())
