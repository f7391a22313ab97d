"""The PATCH body of API.md §9.6: parsed and checked in the contract's order, before the
engine looks at the namespace."""
import orjson

from callfs._native.pathnorm import PathError, normalize_path, split_parent
from callfs.core.moves import MoveRequest
from callfs.core.permissions import parse_mode
from callfs.domain import errors
from callfs.domain.model import Attributes
from callfs.http.request import read_limited

MAX_BODY = 1024 * 1024
_INVALID_JSON = "invalid JSON body"


async def read_move_request(request, source: str) -> tuple[MoveRequest | None, Attributes]:
    """The move or copy a PATCH body asks for (None when it changes attributes only), and
    the attributes it changes (chmod, chgrp, chown)."""
    fields = await _json_object(request.body)
    name, destination = fields.get("name"), fields.get("destination")
    for value in (name, destination):
        if value is not None and not isinstance(value, str):
            raise errors.BadRequest(_INVALID_JSON)
    attributes = _attributes(fields)
    if attributes and not name and not destination:
        return None, attributes
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
        attributes=attributes,
    )
    return move, attributes


def _attributes(fields: dict) -> Attributes:
    """`mode` (octal digits, at most 07777), `group` and `owner` (API.md §9.6)."""
    mode = fields.get("mode")
    if mode is not None:
        if not isinstance(mode, str):
            raise errors.BadRequest("invalid mode")
        mode = parse_mode(mode)
    names = []
    for key in ("group", "owner"):
        value = fields.get(key)
        if value is not None and not isinstance(value, str):
            raise errors.BadRequest(_INVALID_JSON)
        names.append(value if value else None)
    return Attributes(mode=mode, group=names[0], owner=names[1])


async def _json_object(body) -> dict:
    raw = await read_limited(body, MAX_BODY)
    if raw is None:
        raise errors.BadRequest(_INVALID_JSON)
    try:
        fields = orjson.loads(raw)
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
