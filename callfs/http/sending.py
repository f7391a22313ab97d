"""Moving bodies between the connection's socket and files: a download by sendfile (or in
bounded chunks over TLS), a stream, and the readiness waits they and a spliced upload need.

The transport owns the socket, and the event loop refuses a second watcher on its descriptor:
readiness is watched on a duplicate (`_dup_fd`), made on first use and released with the
connection. A mixin of HttpProtocol, whose fields (`transport`, `loop`, `closed`, `_sock_fd`,
`_dup_fd`, `_stall_since`, the waiters) and `_drain` it uses.
"""
import asyncio
import logging
import os

from callfs._native.stream import SpliceRelay, send_file
from callfs.domain.errors import ClientGone

log = logging.getLogger("callfs.http")

# Bytes per read of a download that cannot go by sendfile (TLS). Each read is encrypted into
# the transport's buffers and copied out once more, so the chunk, its ciphertext and the copy
# want to stay in the CPU's cache: 64 KiB cost the least CPU per byte here (docs/tls.md).
FILE_CHUNK = 64 * 1024


class BodySender:
    async def _send_stream(self, stream, chunked: bool) -> int:
        """Returns the body bytes sent."""
        sent = 0
        async for chunk in stream:
            if not chunk:
                continue
            sent += len(chunk)
            if chunked:
                self.transport.write(b"%x\r\n" % len(chunk) + bytes(chunk) + b"\r\n")
            else:
                self.transport.write(chunk)
            await self._drain()
        if chunked:
            self.transport.write(b"0\r\n\r\n")
        return sent

    async def _send_handle(self, handle, offset: int, count: int, request_id: str) -> bytes:
        """`count` bytes of an open file from `offset`, and how they went: by sendfile where
        the handle has a descriptor (b"sendfile"; b"copy" over TLS), by splice from the socket
        they arrive on where the backend hands that over (b"splice"), else as its backend
        streams them, one piece at a time under the transport's flow control (b"copy"). A
        store that fails or falls short mid-body cuts the connection (the client sees a short
        body, never a complete-looking wrong one), and the log says why."""
        if handle.fd >= 0:
            await self._send_file(handle.fd, offset, count)
            return b"sendfile" if self._sock_fd >= 0 else b"copy"
        source = handle.socket_body(offset, count) if self._sock_fd >= 0 else None
        if source is not None:
            await self._relay(source, count, request_id)
            return b"splice"
        sent = 0
        try:
            async for chunk in handle.chunks(offset, count):
                if self.closed:
                    raise ClientGone()
                sent += len(chunk)
                if sent > count:
                    raise OSError("the store sent more bytes than the file has")
                self.transport.write(chunk)
                await self._drain()
            if sent != count:
                raise OSError(f"the store ended the file after {sent} of {count} bytes")
        except (ClientGone, asyncio.CancelledError):
            raise
        except Exception as exc:
            raise _cut(request_id, exc, sent) from None
        return b"copy"

    async def _relay(self, source, count: int, request_id: str) -> None:
        """The body from the store's socket to the client's, socket to socket through a pipe
        (splice), never through Python: what had come already first, then the rest as either
        side is ready. The store waits at most its read timeout for each piece."""
        whole = False
        sent = len(source.buffered)
        relay = SpliceRelay()
        try:
            if sent > count or source.remaining != count - sent:
                raise OSError(f"the store's answer holds {sent + source.remaining} bytes, "
                              f"not {count}")
            if source.buffered:
                self.transport.write(source.buffered)
            left = source.remaining
            while left > 0:
                if self.closed:
                    raise ClientGone()
                if self.transport.get_write_buffer_size():
                    await self._wait_writable()  # what the transport holds goes first
                    continue
                try:
                    step = relay.step(source.fd, self._sock_fd, left)
                except (BrokenPipeError, ConnectionResetError):
                    raise ClientGone() from None  # (the store's side fails as OSError)
                if step > 0:
                    left -= step
                    sent += step
                    self._stall_since = 0.0
                elif step == -3:
                    await self._wait_writable()
                elif step == -1:
                    await self._wait_store(source.fd, source.timeout)
                else:
                    raise OSError(f"the store ended the body after {sent} of {count} bytes")
            whole = True
        except (ClientGone, asyncio.CancelledError):
            raise
        except Exception as exc:
            raise _cut(request_id, exc, sent) from None
        finally:
            relay.close()
            source.done(whole)

    async def _wait_store(self, fd: int, timeout: float) -> None:
        """The store's socket `fd` (a descriptor of the caller's own) has bytes, or the
        client is gone (connection_lost fails the waiter), or TimeoutError after `timeout`."""
        waiter = self.loop.create_future()
        self._read_waiter = waiter
        self.loop.add_reader(fd, _set_once, waiter)
        try:
            await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            raise OSError(f"the store sent nothing for {timeout:g} s") from None
        finally:
            self._read_waiter = None
            self.loop.remove_reader(fd)

    async def _send_file(self, fd: int, offset: int, count: int) -> None:
        if self._sock_fd < 0:
            await self._send_file_buffered(fd, offset, count)
            return
        while count > 0:
            if self.closed:
                raise ClientGone()
            if self.transport.get_write_buffer_size() == 0:
                try:
                    sent = send_file(self._sock_fd, fd, offset, count)
                except OSError:
                    raise ClientGone() from None
                if sent == 0:
                    raise ClientGone()  # the file shrank under us: the length promised is wrong
                if sent > 0:
                    offset += sent
                    count -= sent
                    self._stall_since = 0.0
                    continue
            await self._wait_writable()

    async def _send_file_buffered(self, fd: int, offset: int, count: int) -> None:
        """One chunk at a time, none while the transport asks to pause: what a download holds
        is one chunk plus the transport's buffers (its high-water mark), whatever its size."""
        transport = self.transport
        while count > 0:
            if self._writing_paused or self.closed:
                await self._drain()
            chunk = os.pread(fd, min(count, FILE_CHUNK), offset)
            if not chunk:
                raise ClientGone()  # the file shrank under us: the length promised is wrong
            transport.write(chunk)
            offset += len(chunk)
            count -= len(chunk)

    async def _wait_writable(self) -> None:
        if not self._stall_since:
            self._stall_since = self.loop.time()
        await self._wait_ready(self.loop.add_writer, self.loop.remove_writer, "_drain_waiter")

    async def _wait_readable(self) -> None:
        await self._wait_ready(self.loop.add_reader, self.loop.remove_reader, "_read_waiter")

    async def _wait_ready(self, watch, unwatch, waiter_field: str) -> None:
        """Readiness of the transport's socket through a duplicate descriptor: the event loop
        refuses a second watcher on the transport's own descriptor. The waiter sits in
        `waiter_field`, where connection_lost finds it."""
        if self._dup_fd < 0:
            self._dup_fd = os.dup(self._sock_fd)
        waiter = self.loop.create_future()
        setattr(self, waiter_field, waiter)
        watch(self._dup_fd, _set_once, waiter)
        try:
            await waiter
        finally:
            setattr(self, waiter_field, None)
            if self._dup_fd >= 0:
                unwatch(self._dup_fd)

    def _release_dup(self) -> None:
        if self._dup_fd >= 0:
            self.loop.remove_writer(self._dup_fd)
            self.loop.remove_reader(self._dup_fd)
            os.close(self._dup_fd)
            self._dup_fd = -1


def _cut(request_id: str, exc: Exception, sent: int) -> ClientGone:
    """A store that failed mid-body: logged, and the connection is to be cut."""
    log.error("download cut: the store failed mid-body",
              extra={"request_id": request_id, "error": str(exc), "sent": sent})
    return ClientGone()


def _set_once(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)
