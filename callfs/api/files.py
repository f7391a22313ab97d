"""`/v1/files/{path}`: download, stat, create, overwrite, delete (API.md §9.1–§9.5)."""
import orjson

from callfs.api.shapes import file_info, metadata_headers
from callfs.core import errors
from callfs.core.engine import CrossServerConflict
from callfs.core.model import DIRECTORY, FILE
from callfs.http.response import JSON, OCTETS, Response, json_response


class FilesAPI:
    def __init__(self, engine, peer_endpoints: dict[str, str]):
        self.engine = engine
        self.peer_endpoints = peer_endpoints

    async def get(self, request, path: str, trailing: bool) -> Response:
        engine = self.engine
        inode = await engine.stat(request.identity, path)
        if inode.type == DIRECTORY:
            children = await engine.list_directory(request.identity, inode)
            body = orjson.dumps([file_info(child) for child in children])
            return Response(200, JSON + metadata_headers(inode), body)
        handle = engine.open_file(request.identity, inode)
        return Response(200, OCTETS + metadata_headers(inode), file=handle, length=handle.size)

    async def head(self, request, path: str, trailing: bool) -> Response:
        inode = await self.engine.stat(request.identity, path)
        if inode.type == DIRECTORY:
            return Response(200, JSON + metadata_headers(inode, instance=True))
        return Response(200, OCTETS + metadata_headers(inode, instance=True), length=inode.size)

    async def post(self, request, path: str, trailing: bool) -> Response:
        try:
            if trailing:
                created = await self.engine.create_directory(request.identity, path)
                return Response(201 if created else 200)
            await self.engine.create_file(request.identity, path, request.body)
            return Response(201)
        except CrossServerConflict as exc:
            return json_response(409, self._conflict_body(exc))

    async def put(self, request, path: str, trailing: bool) -> Response:
        if trailing or path == "/":
            raise errors.IsADirectory("cannot PUT a directory path")
        created = await self.engine.put_file(request.identity, path, request.body)
        return Response(201 if created else 200)

    async def delete(self, request, path: str, trailing: bool) -> Response:
        await self.engine.delete(request.identity, path)
        return Response(204)

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
