"""A writer process killed with SIGKILL loses nothing it had flushed: the archive in a
child process, recovered in this one."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from sfmd.archive import PublishedFile
from tests.helpers.archive import content, make_archive, parts


def test_a_sigkilled_writer_loses_nothing_that_was_flushed(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import asyncio, sys, zlib
        from pathlib import Path
        from sfmd.archive import Archive
        from sfmd.sources.twitter.framing import count_tweets

        async def main():
            archive = Archive(Path(sys.argv[1]), "s1", save_interval=3600, compress=True,
                              flush_interval=0.05, count=count_tweets)
            await archive.open()
            for n in range(100):
                await archive.write([b'{"n": %d}' % n], 1)
            def on_disk():
                part = archive.current_file
                raw = part.read_bytes() if part is not None else b""
                return zlib.decompressobj(31).decompress(raw).count(b"\\n")

            while on_disk() < 100:  # every message handed to the OS, none left in memory
                await asyncio.sleep(0.01)
            print("flushed", flush=True)
            await asyncio.sleep(60)

        asyncio.run(main())
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == b"flushed\n"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert len(parts(tmp_path)) == 1

    async def reopen() -> list[PublishedFile]:
        archive = make_archive(tmp_path)
        try:
            return await archive.open()
        finally:
            await archive.close()

    [recovered] = asyncio.run(reopen())
    assert content(recovered.path) == b"".join(b'{"n": %d}\n' % n for n in range(100))
    assert parts(tmp_path) == []
