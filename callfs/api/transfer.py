"""`GET /v1/files/ws/{path}?mode=download|upload`: file transfer over a WebSocket (API.md §12).

The route's checks answer in HTTP; once upgraded, failures are close frames. A download sends
the file in binary messages of at most 64 KiB, read one at a time from the engine's handle; an
upload streams the messages into the engine's ordinary atomic write (PUT), which stages them
and publishes only after the client's close frame.
"""
import logging

from callfs.domain import errors
from callfs.domain.errors import ClientGone
from callfs.domain.model import DIRECTORY, ROOT
from callfs.http.response import Response
from callfs.http.websocket import (INTERNAL_ERROR, NORMAL, POLICY_VIOLATION, UNSUPPORTED_DATA,
                                   Closed, accept)

log = logging.getLogger("callfs.api")

CHUNK = 64 * 1024  # API.md §12: binary messages of at most 65 536 bytes
_MODES = ("download", "upload")


class TransferAPI:
    def __init__(self, engine):
        self.engine = engine

    async def websocket(self, request, path: str, trailing: bool) -> Response:
        if trailing or path == ROOT:
            raise errors.IsADirectory("a WebSocket transfer needs a file path")
        mode = request.query_params().get("mode", "").strip().lower() or "download"
        if mode not in _MODES:
            raise errors.BadRequest("mode must be download or upload")
        who = request.principal
        if mode == "download":
            return accept(request, lambda ws: self._download(ws, who, path,
                                                             request.request_id), upload=False)
        return accept(request, lambda ws: self._upload(ws, who, path), upload=True)

    async def _download(self, ws, who, path: str, request_id: str) -> None:
        engine = self.engine
        try:
            inode = await engine.stat(who, path)
        except (errors.NotFound, errors.PermissionDenied):
            raise Closed(POLICY_VIOLATION, "read access denied") from None
        except errors.CallFSError:
            raise Closed(INTERNAL_ERROR, "failed to open file") from None
        if inode.type == DIRECTORY:
            raise Closed(INTERNAL_ERROR, "failed to open file")
        try:
            inode, handle = await engine.open_current(who, inode)
        except errors.PermissionDenied:
            raise Closed(POLICY_VIOLATION, "read access denied") from None
        except errors.CallFSError as exc:
            # The session is open, so no error response carries this: the log does.
            log.error("websocket download failed", extra={"request_id": request_id,
                                                          "error": str(exc)})
            raise Closed(INTERNAL_ERROR, "failed to open file") from None
        try:
            pieces = handle.chunks(0, handle.size)
            try:
                async for piece in pieces:
                    for start in range(0, len(piece), CHUNK):
                        if ws.remote_close is not None:
                            return  # the client went away politely: answer its close, no more
                        await ws.send_bytes(piece[start:start + CHUNK])
            except (OSError, errors.CallFSError) as exc:
                log.error("websocket download failed", extra={"request_id": request_id,
                                                              "error": str(exc)})
                raise Closed(INTERNAL_ERROR, "file read failed") from None
            finally:
                await pieces.aclose()
        finally:
            handle.close()
        await ws.close(NORMAL, "download complete")

    async def _upload(self, ws, who, path: str) -> None:
        """The session is the body: `read` gives the messages' bytes and b"" after the client's
        close frame; a limit, a protocol error or a lost connection raises inside the engine's
        write, which then stores nothing."""
        engine = self.engine
        try:
            await engine.put_file(who, path, ws)
        except (Closed, ClientGone):
            raise
        except errors.PermissionDenied:
            raise Closed(POLICY_VIOLATION, "write access denied") from None
        except errors.IsADirectory:
            raise Closed(UNSUPPORTED_DATA, "target path is not a file") from None
        except errors.CallFSError:
            raise Closed(INTERNAL_ERROR, await self._failed_store(who, path)) from None
        await ws.send_text(f"ok:{ws.received}")
        await ws.close(NORMAL, "upload complete")

    async def _failed_store(self, who, path: str) -> str:
        """A failed write stores nothing, so the entry still tells whether it was a create."""
        try:
            await self.engine.stat(who, path)
        except errors.CallFSError:
            return "file create failed"
        return "file update failed"
