"""`GET /v1/directories/{path}`: the listing object, optionally recursive (API.md §9.7)."""
import re

import orjson

from callfs.api.shapes import file_info
from callfs.domain import errors
from callfs.domain.model import DIRECTORY
from callfs.http.response import JSON, Response, header_lines

DEFAULT_DEPTH = 100
MAX_DEPTH = 1000
_INT = re.compile(r"[+-]?[0-9]+\Z")


def parse_depth(raw: str | None) -> int:
    """Missing, non-integer or negative → 100; above 1000 → 1000."""
    if raw is None or not _INT.match(raw):
        return DEFAULT_DEPTH
    value = int(raw)
    if value < 0:
        return DEFAULT_DEPTH
    return min(value, MAX_DEPTH)


class DirectoriesAPI:
    def __init__(self, engine):
        self.engine = engine

    async def get(self, request, path: str, trailing: bool) -> Response:
        params = request.query_params()
        recursive = params.get("recursive") == "true"
        depth = parse_depth(params.get("max_depth"))
        inode = await self.engine.stat(request.principal, path)
        if inode.type != DIRECTORY:
            exc = errors.NotADirectory("path is a file")
            exc.status = 400
            raise exc
        if recursive:
            items = await self.engine.list_recursive(request.principal, inode, depth)
        else:
            items = await self.engine.list_directory(request.principal, inode)
        body = {"path": inode.path, "type": "directory", "recursive": recursive}
        if recursive and depth != 0:
            body["max_depth"] = depth
        body["count"] = len(items)
        body["items"] = [file_info(item) for item in items]
        headers = JSON + header_lines([("X-CallFS-Type", "directory"),
                                       ("X-CallFS-Count", len(items)),
                                       ("X-CallFS-Recursive", "true" if recursive else "false")])
        return Response(200, headers, orjson.dumps(body))
