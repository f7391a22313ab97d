"""A TCP relay in front of a real service on loopback, so that a test can take the service away
(every connection dropped, new ones refused) and bring it back on the same port, without
touching the real server."""
import asyncio
import socket
import threading


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Relay:
    """The relay on the caller's event loop: `await start()`, `await stop()`."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1"):
        self.target = (target_host, target_port)
        self.port = _unused_port()
        self.server = None
        self.transports: set = set()

    async def start(self):
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def stop(self):
        self.server.close()
        for transport in list(self.transports):
            transport.abort()
        self.transports.clear()
        await self.server.wait_closed()

    async def _serve(self, reader, writer):
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        pair = {writer.transport, up_writer.transport}
        self.transports |= pair

        async def pump(src, dst):
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        self.transports -= pair


class ThreadedRelay:
    """The relay on an event loop of its own thread, for tests without a loop: `start()`,
    `stop()`, and `close()` at the end."""

    def __init__(self, target_port: int):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.relay = Relay(target_port)
        self.port = self.relay.port

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def start(self):
        self._call(self.relay.start())

    def stop(self):
        self._call(self.relay.stop())

    def close(self):
        try:
            self.stop()
        except Exception:
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
