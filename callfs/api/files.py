"""`/v1/files/{path}`: download, stat, create, overwrite, delete (API.md §9.1–§9.5), with the
range and conditional requests of API.md §2."""
import orjson

from callfs.api.shapes import cache_headers, file_info, metadata_headers, validators
from callfs.domain import errors
from callfs.api.moves import read_move_request
from callfs.core.engine import Check, CrossServerConflict
from callfs.core.permissions import parse_mode
from callfs.domain.model import DIRECTORY, FILE, Inode
from callfs.http.conditional import (UNSATISFIABLE, Preconditions, Validators, if_range_matches,
                                     parse_range, select_range)
from callfs.http.response import JSON, OCTETS, Response, json_response


def write_check(request) -> Check | None:
    """The request's write preconditions as the engine's check: it runs them against the entry
    the write would replace (PUT, DELETE, POST; PATCH on its source), before and under the
    path's lock. None when the request has none."""
    conditions = Preconditions.from_headers(request.headers)
    if not conditions.guards_write:
        return None

    def check(existing: Inode | None) -> None:
        conditions.check_write(None if existing is None else validators(existing))

    return check


def creation_attributes(request) -> tuple[int | None, str | None]:
    """What a creating request asks for (API.md §7): `X-CallFS-Mode` (octal, at most 07777;
    400 otherwise) and `X-CallFS-Group`."""
    mode = request.headers.get(b"x-callfs-mode")
    group = request.headers.get(b"x-callfs-group")
    if mode is not None:
        try:
            mode = parse_mode(mode.decode("ascii"))
        except UnicodeDecodeError:
            raise errors.BadRequest("invalid mode") from None
    if group is not None:
        try:
            group = group.decode("utf-8").strip() or None
        except UnicodeDecodeError:
            raise errors.BadRequest("invalid group") from None
    return mode, group


def _range_not_satisfiable(size: int) -> Response:
    exc = errors.RangeNotSatisfiable()
    body = orjson.dumps({"code": exc.code, "message": exc.message})
    return Response(416, JSON + b"Content-Range: bytes */%d\r\n" % size, body)


def file_content(request, headers: bytes, inode: Inode, handle,
                 current: Validators | None = None) -> Response:
    """An open file's bytes as a GET sends them, after the headers given (Content-Type on):
    one satisfiable Range (honoured unless an If-Range no longer matches `current`, the
    file's validators) → 206, an unsatisfiable one → 416, otherwise 200."""
    requested = request.headers.get(b"range")
    if requested is not None:
        if_range = request.headers.get(b"if-range")
        if if_range is None or if_range_matches(if_range, current or validators(inode)):
            size = handle.size
            chosen = select_range(parse_range(requested), size)
            if chosen is UNSATISFIABLE:
                handle.close()
                return _range_not_satisfiable(size)
            if chosen is not None:
                start, end = chosen
                part = b"Content-Range: bytes %d-%d/%d\r\n" % (start, end, size)
                return Response(206, headers + part, file=handle, offset=start,
                                length=end - start + 1)
    return Response(200, headers, file=handle, length=handle.size)


class FilesAPI:
    def __init__(self, engine, peer_endpoints: dict[str, str]):
        self.engine = engine
        self.peer_endpoints = peer_endpoints

    async def get(self, request, path: str, trailing: bool) -> Response:
        engine = self.engine
        inode = await engine.stat(request.principal, path)
        conditions = Preconditions.from_headers(request.headers)
        if inode.type == DIRECTORY:
            if conditions and not conditions.check_read(validators(inode)):
                return Response(304, metadata_headers(inode))
            children = await engine.list_directory(request.principal, inode)
            body = orjson.dumps([file_info(child) for child in children])
            return Response(200, JSON + metadata_headers(inode), body)
        # Opened first, so that a caller who may not read gets 403, never 304 or 412.
        inode, handle = await engine.open_current(request.principal, inode)
        try:
            return self._file_response(request, inode, handle, conditions)
        except BaseException:
            handle.close()
            raise

    def _file_response(self, request, inode: Inode, handle, conditions: Preconditions) -> Response:
        """RFC 9110 §13.2.2 order: the preconditions (412 / 304), then Range (206 / 416)."""
        headers = metadata_headers(inode) + cache_headers(inode)
        current = None
        if conditions:
            current = validators(inode)
            if not conditions.check_read(current):
                handle.close()
                return Response(304, headers)
        return file_content(request, OCTETS + headers, inode, handle, current)

    async def head(self, request, path: str, trailing: bool) -> Response:
        """Like GET without a body; Range is ignored (RFC 9110 §14.2). A file's bytes are
        checked as GET opens them, so a 200 here means a GET could be honoured."""
        inode = await self.engine.stat(request.principal, path)
        if inode.type != DIRECTORY:
            inode, _ = await self.engine.open_current(request.principal, inode, read=False)
        conditions = Preconditions.from_headers(request.headers)
        headers = metadata_headers(inode, instance=True)
        if inode.type != DIRECTORY:
            headers += cache_headers(inode)
        if conditions and not conditions.check_read(validators(inode)):
            return Response(304, headers)
        if inode.type == DIRECTORY:
            return Response(200, JSON + headers)
        return Response(200, OCTETS + headers, length=inode.size)

    async def post(self, request, path: str, trailing: bool) -> Response:
        mode, group = creation_attributes(request)
        try:
            if trailing:
                created = await self.engine.create_directory(request.principal, path, mode,
                                                             group)
                return Response(201 if created else 200)
            await self.engine.create_file(request.principal, path, request.body,
                                          write_check(request), mode, group)
            return Response(201)
        except CrossServerConflict as exc:
            return json_response(409, self._conflict_body(exc))

    async def put(self, request, path: str, trailing: bool) -> Response:
        if trailing or path == "/":
            raise errors.IsADirectory("cannot PUT a directory path")
        mode, group = creation_attributes(request)
        created = await self.engine.put_file(request.principal, path, request.body,
                                             write_check(request), mode, group)
        return Response(201 if created else 200)

    async def delete(self, request, path: str, trailing: bool) -> Response:
        await self.engine.delete(request.principal, path, write_check(request))
        return Response(204)

    async def patch(self, request, path: str, trailing: bool) -> Response:
        """Rename, move (API.md §9.6) or copy (its CallFS addition)."""
        move, attributes = await read_move_request(request, path)
        check = write_check(request)
        if move is None:
            inode = await self.engine.set_attributes(request.principal, path, attributes, check)
            return json_response(200, file_info(inode))
        if move.copy:
            created = await self.engine.copy(request.principal, path, move, check)
            return json_response(201 if created else 200, {"path": move.destination})
        await self.engine.move(request.principal, path, move, check)
        return json_response(200, {"path": move.destination})

    def _conflict_body(self, exc: CrossServerConflict) -> dict:
        """API.md §13.3."""
        existing = exc.existing
        suggestions = {
            (DIRECTORY, DIRECTORY): "Directory already exists on another server. Use GET to access it.",
            (DIRECTORY, FILE): "Path exists as file on another server, cannot create directory",
            (FILE, FILE): "File already exists on another server. Use PUT to update it.",
            (FILE, DIRECTORY): "Path exists as directory on another server, cannot create file",
        }
        body = {
            "error": "Resource exists on another server",
            "existing_path": existing.path,
            "instance_id": existing.instance_id,
            "backend_type": existing.backend,
            "suggestion": suggestions[(exc.wanted_type, existing.type)],
        }
        base = self.peer_endpoints.get(existing.instance_id or "")
        if exc.wanted_type == FILE and existing.type == FILE and base:
            from urllib.parse import quote
            body["update_url"] = base.rstrip("/") + "/v1/files" + quote(existing.path, safe="/")
        return body
