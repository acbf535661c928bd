"""A TcpProxy that can black-hole: connections are still accepted, but nothing is forwarded either way.

That is what a hung server or a network partition looks like to a client (TCP accepted, no answer, no reset),
and the case a plain outage (`down()`, connection refused) does not test: only timeouts end the wait.
"""

from __future__ import annotations

import asyncio
import contextlib

from tests.tcp_proxy import TcpProxy


class BlackHoleProxy(TcpProxy):
    """`blackhole()` stops forwarding (held bytes stay held, new connections wait); `restore()` resumes it."""

    def __init__(self, target_host: str, target_port: int) -> None:
        super().__init__(target_host, target_port)
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._closing = False
        self._generation = 0  # bumped by restore(cut_held=True): older connections are dropped, not resumed
        self.accepted = 0  # connections accepted over the proxy's life

    def blackhole(self) -> None:
        """Keep accepting, forward nothing."""
        self._flowing.clear()

    def restore(self, cut_held: bool = False) -> None:
        """Forward again, starting with what was held; with `cut_held`, every connection that existed during the
        black hole is reset instead (what a long partition leaves: the peers gave up on them), so nothing held is
        ever delivered and the test knows exactly what reached the server."""
        if cut_held:
            self._generation += 1
            for writer in list(self._conns):
                writer.transport.abort()
            self._conns.clear()
        self._flowing.set()

    async def close(self) -> None:
        """Stop for good: release held connections and cut every connection."""
        self._closing = True
        self._flowing.set()
        await self.down()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._conns.add(writer)
        generation = self._generation
        await self._flowing.wait()  # accepted, but the server is not even asked until the hole closes
        if self._closing or generation != self._generation:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            self._conns.discard(writer)
            return
        self._conns.add(up_writer)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                while data := await src.read(65536):
                    await self._flowing.wait()
                    if generation != self._generation:
                        break
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._conns -= {writer, up_writer}
