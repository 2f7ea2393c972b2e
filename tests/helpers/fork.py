"""`sfmd ARGV` forked from the test process: a refused start-up costs milliseconds, not an
interpreter's start."""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from pathlib import Path

from sfmd import cli

REFUSAL_DEADLINE = 30.0  # seconds for a refused start-up to exit (generous: shared cores)


def sfmd_in_fork(argv: list[str], cwd: Path) -> tuple[int, str, str]:
    """`sfmd ARGV` as a child process: (exit code, stdout, stderr).

    Importing sfmd costs most of a refused start-up (about half a second of CPU), and the
    tables here refuse dozens: so the child is forked from this process, which has imported
    sfmd already, and runs the same entry point as the `sfmd` command, in its own process,
    with its own stdout, stderr and exit code. Call it only where no event loop is running.
    """
    out_path, err_path = cwd / "fork-stdout.txt", cwd / "fork-stderr.txt"
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            os.chdir(cwd)
            for fd, path in ((1, out_path), (2, err_path)):
                os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), fd)
            sys.stdout = open(1, "w", closefd=False)  # the child exits below
            sys.stderr = open(2, "w", closefd=False)
            code = cli.main(argv)
        except SystemExit as e:  # argparse's usage errors
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            traceback.print_exc()  # what the real command would show: an uncaught error
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    deadline = time.monotonic() + REFUSAL_DEADLINE
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"sfmd {' '.join(argv)} still running after {REFUSAL_DEADLINE} s")
        time.sleep(0.01)  # polling a child's exit, not synchronising with it
    code = os.waitstatus_to_exitcode(status)
    return code, out_path.read_text(errors="replace"), err_path.read_text(errors="replace")
