"""supervisord's XML-RPC API, from asyncio: the calls sfmd needs and `supervisorctl update`.

- `SupervisorClient`: the XML-RPC calls sfmd needs, over a Unix socket or HTTP. An unreachable
  supervisord raises `SupervisorUnavailable` promptly (a `ConnectionError`): the caller waits
  and reconciles again later, it never hangs.
- `apply(client, prefix)`: `supervisorctl update`, limited to the groups named with sfmd's
  prefix, so other programs on the same supervisord are never stopped or restarted.

`xmlrpc.client` is loaded at the first call, not with this module: with the XML parser and
`decimal` it brings, it is 0.7 MB of resident memory, and a daemon with no process-isolated
stream never calls supervisord.
"""

from __future__ import annotations

import asyncio
import base64
import enum
from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import unquote, urlsplit

import aiohttp

from sfmd.errors import SfmdError
from sfmd.ops.confs import STARTSECS, STOPWAITSECS

#: Seconds for a call that returns at once (getState, reloadConfig with many confs, ...).
CALL_TIMEOUT = 15.0
#: Seconds for a call with wait=True: supervisord answers only once the process is up (up to
#: startsecs) or down (up to stopwaitsecs, then SIGKILL).
WAIT_TIMEOUT = STOPWAITSECS + STARTSECS + 10.0
#: Group operations in flight at once: enough to stop hundreds of streams in parallel without
#: queueing hundreds of requests on supervisord's single thread.
PARALLEL = 16


class Fault(enum.IntEnum):
    """supervisord's fault codes (supervisor.xmlrpc.Faults) that sfmd acts on."""

    UNKNOWN_METHOD = 1
    INCORRECT_PARAMETERS = 2
    BAD_ARGUMENTS = 3
    SHUTDOWN_STATE = 6
    BAD_NAME = 10
    BAD_SIGNAL = 11
    NO_FILE = 20
    NOT_EXECUTABLE = 21
    FAILED = 30
    ABNORMAL_TERMINATION = 40
    SPAWN_ERROR = 50
    ALREADY_STARTED = 60
    NOT_RUNNING = 70
    SUCCESS = 80
    ALREADY_ADDED = 90
    STILL_RUNNING = 91
    CANT_REREAD = 92


class SupervisorError(SfmdError):
    """Talking to supervisord went wrong; the message says what to look at."""


class SupervisorUnavailable(SupervisorError, ConnectionError):
    """supervisord did not answer (not running, socket missing, refused, timed out)."""


class SupervisorFault(SupervisorError):
    """supervisord answered with a fault; `code` and `name` say which (BAD_NAME, ...)."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(code, text)
        self.code = code
        self.text = text

    @property
    def name(self) -> str:
        try:
            return Fault(self.code).name
        except ValueError:
            return "UNKNOWN"

    def __str__(self) -> str:
        return f"supervisord fault {self.code} {self.name}: {self.text}"


class CantReread(SupervisorFault):
    """supervisord cannot re-read its configuration: some conf file is broken.

    Ours are written atomically and validated, so the file named in `text` is someone else's;
    until it is fixed, supervisord applies no change at all, ours included.
    """

    def __str__(self) -> str:
        return (
            "supervisord refused to re-read its configuration, so no program change can be "
            f"applied until the file it names is fixed: {self.text}"
        )


# --- the client ------------------------------------------------------------------------------


class SupervisorClient:
    """supervisord's XML-RPC interface, for `unix:///path.sock` or `http://host:port` URLs.

    One aiohttp session, made on first use (it needs a running loop); `close()` it when done.
    """

    def __init__(
        self,
        server_url: str,
        *,
        timeout: float = CALL_TIMEOUT,
        wait_timeout: float = WAIT_TIMEOUT,
    ) -> None:
        self.server_url = server_url
        self.timeout = timeout
        self.wait_timeout = wait_timeout
        self._session: aiohttp.ClientSession | None = None
        self._headers = {"Content-Type": "text/xml"}
        if server_url.startswith("unix://"):
            self._socket: str | None = server_url[len("unix://") :]
            self._endpoint = "http://localhost/RPC2"
            self._shown = server_url
        else:
            parts = urlsplit(server_url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"not a supervisord URL: {server_url!r}")
            self._socket = None
            if parts.username is not None:
                userpass = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
                token = base64.b64encode(userpass.encode()).decode("ascii")
                self._headers["Authorization"] = f"Basic {token}"
            netloc = parts.netloc.rpartition("@")[2]
            path = parts.path.rstrip("/")
            if not path.endswith("/RPC2"):
                path += "/RPC2"
            self._endpoint = f"{parts.scheme}://{netloc}{path}"
            self._shown = f"{parts.scheme}://{netloc}"  # never the password

    def __repr__(self) -> str:
        return f"SupervisorClient({self._shown!r})"

    async def __aenter__(self) -> SupervisorClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = (
                aiohttp.UnixConnector(path=self._socket)
                if self._socket is not None
                else aiohttp.TCPConnector()
            )
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=None)
            )
        return self._session

    async def call(self, method: str, *params: Any, waits: bool = False) -> Any:
        """One XML-RPC call; faults raise SupervisorFault, silence SupervisorUnavailable.

        `waits`: supervisord holds the answer until a process is up or down (wait=True).
        """
        import xmlrpc.client  # at the first call: see the module's docstring
        from xml.parsers.expat import ExpatError

        seconds = self.wait_timeout if waits else self.timeout
        body = xmlrpc.client.dumps(params, methodname=method).encode()
        try:
            async with asyncio.timeout(seconds):
                async with self._get_session().post(
                    self._endpoint, data=body, headers=self._headers
                ) as response:
                    raw = await response.read()
                    status = response.status
        except TimeoutError:
            raise SupervisorUnavailable(
                f"supervisord at {self._shown} did not answer {method} within {seconds:g} s"
            ) from None
        except (aiohttp.ClientError, OSError) as e:
            raise SupervisorUnavailable(
                f"supervisord is not reachable at {self._shown}: {_reason(e)}"
            ) from None
        if status == 401:
            raise SupervisorError(
                f"supervisord at {self._shown} wants a user name and password (HTTP 401): put "
                "them in [supervisor] server_url as http://user:password@host:port"
            )
        if status != 200:
            raise SupervisorError(
                f"supervisord at {self._shown} answered HTTP {status} to {method}"
            )
        try:
            (result,), _ = xmlrpc.client.loads(raw)
        except xmlrpc.client.Fault as f:
            cls = CantReread if f.faultCode == Fault.CANT_REREAD else SupervisorFault
            raise cls(f.faultCode, f.faultString) from None
        except (ExpatError, ValueError) as e:
            raise SupervisorError(
                f"{self._shown} answered {method} with something that is not XML-RPC ({e})"
            ) from None
        return result

    # -- the methods sfmd uses (names as in supervisor's API docs, snake_cased) ----------------

    async def get_state(self) -> dict[str, Any]:
        """{"statecode": 1, "statename": "RUNNING"} when supervisord is up and serving."""
        return dict(await self.call("supervisor.getState"))

    async def reload_config(self) -> tuple[list[str], list[str], list[str]]:
        """Re-read the conf files: (added, changed, removed) group names. Applies nothing."""
        [[added, changed, removed]] = await self.call("supervisor.reloadConfig")
        return list(added), list(changed), list(removed)

    async def add_process_group(self, name: str) -> bool:
        return bool(await self.call("supervisor.addProcessGroup", name))

    async def stop_process_group(self, name: str, wait: bool = True) -> list[dict[str, Any]]:
        return list(await self.call("supervisor.stopProcessGroup", name, wait, waits=wait))

    async def remove_process_group(self, name: str) -> bool:
        return bool(await self.call("supervisor.removeProcessGroup", name))

    async def start_process(self, name: str, wait: bool = True) -> bool:
        return bool(await self.call("supervisor.startProcess", name, wait, waits=wait))

    async def stop_process(self, name: str, wait: bool = True) -> bool:
        return bool(await self.call("supervisor.stopProcess", name, wait, waits=wait))

    async def get_process_info(self, name: str) -> dict[str, Any]:
        return dict(await self.call("supervisor.getProcessInfo", name))

    async def get_all_process_info(self) -> list[dict[str, Any]]:
        return [dict(info) for info in await self.call("supervisor.getAllProcessInfo")]

    async def signal_process(self, name: str, sig: str | int) -> bool:
        """`sig` as a name ("HUP") or a number."""
        return bool(await self.call("supervisor.signalProcess", name, str(sig)))


def _reason(error: BaseException) -> str:
    """The OS-level cause of a connection error, without aiohttp's wrapping."""
    cause: BaseException = error
    while isinstance(cause, aiohttp.ClientConnectorError) and cause.os_error is not None:
        cause = cause.os_error
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror
    return str(cause) or type(cause).__name__


async def waiting_reason(client: SupervisorClient) -> str | None:
    """None if supervisord answers and runs; else why not, as "waiting for supervisord: ..."."""
    try:
        state = await client.get_state()
    except SupervisorError as e:
        return f"waiting for supervisord: {e}"
    if state.get("statename") != "RUNNING":
        return f"waiting for supervisord: it is {state.get('statename', 'in an unknown state')}"
    return None


# --- the update dance --------------------------------------------------------------------------


async def apply(client: SupervisorClient, prefix: str) -> dict[str, Any]:
    """`supervisorctl update` for our groups only: {"added", "changed", "removed", "errors"}.

    Groups whose names lack `prefix` are reported by supervisord but left alone. Stops come
    first and complete before any start, so a credential moving between two streams is free
    before its new holder starts. `errors` maps a group to what went wrong with it; the rest
    still proceed. Raises CantReread (someone's broken conf) and SupervisorUnavailable.
    """
    added, changed, removed = await client.reload_config()

    def ours(names: Iterable[str]) -> list[str]:
        return sorted(n for n in names if n.startswith(prefix))

    report: dict[str, Any] = {
        "added": ours(added),
        "changed": ours(changed),
        "removed": ours(removed),
        "errors": {},
    }
    errors: dict[str, str] = report["errors"]
    await _each(report["removed"] + report["changed"], errors, lambda n: _retire(client, n))
    to_add = [n for n in report["changed"] if n not in errors] + report["added"]
    await _each(to_add, errors, lambda n: _add(client, n))
    return report


async def _retire(client: SupervisorClient, name: str) -> None:
    """Stop the group and forget it; already gone is fine."""
    try:
        results = await client.stop_process_group(name, wait=True)
    except SupervisorFault as f:
        if f.code != Fault.BAD_NAME:
            raise
        return
    failed = [r for r in results if r.get("status") not in (Fault.SUCCESS, Fault.NOT_RUNNING)]
    if failed:
        raise SupervisorError(
            f"could not stop {name}: " + "; ".join(str(r.get("description")) for r in failed)
        )
    try:
        await client.remove_process_group(name)
    except SupervisorFault as f:
        if f.code != Fault.BAD_NAME:
            raise


async def _add(client: SupervisorClient, name: str) -> None:
    try:
        await client.add_process_group(name)
    except SupervisorFault as f:
        if f.code != Fault.ALREADY_ADDED:
            raise


async def _each(
    names: list[str], errors: dict[str, str], step: Callable[[str], Awaitable[None]]
) -> None:
    """Run `step(name)` for every name, PARALLEL at a time; faults go to `errors`."""
    gate = asyncio.Semaphore(PARALLEL)

    async def one(name: str) -> None:
        async with gate:
            try:
                await step(name)
            except SupervisorUnavailable:
                raise
            except SupervisorError as e:
                errors[name] = str(e)

    results = await asyncio.gather(*(one(n) for n in names), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


