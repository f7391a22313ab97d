"""The PATCH body of API.md §9.6: parsed and checked in the contract's order, before the
engine looks at the namespace."""
import orjson

from callfs._native.pathnorm import PathError, normalize_path, split_parent
from callfs.domain import errors
from callfs.core.moves import MoveRequest

MAX_BODY = 1024 * 1024
_INVALID_JSON = "invalid JSON body"


async def read_move_request(request, source: str) -> MoveRequest:
    fields = await _json_object(request.body)
    name, destination = fields.get("name"), fields.get("destination")
    for value in (name, destination):
        if value is not None and not isinstance(value, str):
            raise errors.BadRequest(_INVALID_JSON)
    if bool(name) == bool(destination):
        raise errors.BadRequest('exactly one of "name" or "destination" must be provided')
    if name:
        if "/" in name or name in (".", ".."):
            raise errors.BadRequest("name must be a single path segment")
        try:
            segment, _ = normalize_path("/" + name)
        except PathError:
            raise errors.BadRequest("name contains invalid characters") from None
        parent, _ = split_parent(source)
        destination = ("" if parent == "/" else parent) + segment
    else:
        try:
            destination, _ = normalize_path(destination if destination.startswith("/")
                                            else "/" + destination)
        except PathError:
            raise errors.BadRequest("destination is not a valid path") from None
    query = request.query_params()
    move = MoveRequest(
        destination=destination,
        overwrite=_flag(fields, "overwrite") or query.get("overwrite", "").lower() == "true",
        create_parents=_flag(fields, "create_parents"),
        backend=_text(fields, "backend"),
        instance=_text(fields, "instance"),
        copy=_flag(fields, "copy"),
    )
    return move


async def _json_object(body) -> dict:
    chunks, size = [], 0
    while chunk := await body.read():
        size += len(chunk)
        if size > MAX_BODY:
            raise errors.BadRequest(_INVALID_JSON)
        chunks.append(chunk)
    try:
        fields = orjson.loads(b"".join(chunks))
    except orjson.JSONDecodeError:
        raise errors.BadRequest(_INVALID_JSON) from None
    if not isinstance(fields, dict):
        raise errors.BadRequest(_INVALID_JSON)
    return fields


def _flag(fields: dict, key: str) -> bool:
    value = fields.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise errors.BadRequest(_INVALID_JSON)
    return value


def _text(fields: dict, key: str) -> str | None:
    value = fields.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise errors.BadRequest(_INVALID_JSON)
    return value.strip().lower() if key == "backend" else value
