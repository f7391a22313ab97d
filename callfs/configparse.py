"""Reading configuration sources and converting their values (CONFIG.md §2–§4).

Everything here is source-agnostic text handling: the YAML reader, the mapping of
`CALLFS_*` variable names to keys, and the conversions of §4. The schema and the
precedence rules live in `callfs.config`.
"""

import difflib
import json
import math
import os
import re
import secrets
import stat
from decimal import Decimal
from fractions import Fraction
from typing import Any, NewType

import yaml

# Schema types that need more than their Python type says.
Duration = NewType("Duration", float)  # seconds; written in Go duration syntax
UInt = NewType("UInt", int)  # an int that must not be negative
Size = NewType("Size", int)  # bytes; written like "16MiB"
Mode = NewType("Mode", int)  # permission bits; written as octal digits "0644"

ENV_PREFIX = "CALLFS_"
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


class ConversionError(ValueError):
    """A value of the wrong shape; the caller prefixes the key's dotted name."""


class FileFormatError(ValueError):
    """A configuration file that cannot be read or parsed."""


class SecretsFileError(ValueError):
    """The embedded profile's secrets file is unusable; str() is the full message."""


# --- YAML with YAML 1.2 core-schema scalars -------------------------------------------

_BOOL_TAG = "tag:yaml.org,2002:bool"
_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_REPLACED_TAGS = {
    _BOOL_TAG,
    _INT_TAG,
    _FLOAT_TAG,
    "tag:yaml.org,2002:timestamp",
    "tag:yaml.org,2002:value",
}


class CoreSchemaLoader(yaml.SafeLoader):
    """SafeLoader that resolves plain scalars like the YAML 1.2 core schema.

    `yes`/`no`/`on`/`off`, dates and sexagesimal numbers stay strings (CONFIG.md §2.2).
    """


CoreSchemaLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in _REPLACED_TAGS]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
CoreSchemaLoader.add_implicit_resolver(
    _BOOL_TAG, re.compile(r"(?i:true|false)$"), list("tTfF")
)
CoreSchemaLoader.add_implicit_resolver(
    _INT_TAG,
    re.compile(r"[-+]?[0-9]+$|0o[0-7]+$|0x[0-9a-fA-F]+$"),
    list("-+0123456789"),
)
CoreSchemaLoader.add_implicit_resolver(
    _FLOAT_TAG,
    re.compile(
        r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$"
        r"|[-+]?\.(?:inf|Inf|INF)$|\.(?:nan|NaN|NAN)$"
    ),
    list("-+.0123456789"),
)


def _construct_bool(loader: yaml.SafeLoader, node: yaml.Node) -> bool:
    text = loader.construct_scalar(node).lower()
    if text not in ("true", "false"):
        raise yaml.constructor.ConstructorError(
            None, None, f"invalid boolean {text!r}", node.start_mark
        )
    return text == "true"


def _construct_int(loader: yaml.SafeLoader, node: yaml.Node) -> int:
    text = loader.construct_scalar(node)
    try:
        if text.startswith("0o"):
            return int(text[2:], 8)
        if text.startswith("0x"):
            return int(text[2:], 16)
        return int(text, 10)
    except ValueError:
        raise yaml.constructor.ConstructorError(
            None, None, f"invalid integer {text!r}", node.start_mark
        ) from None


def _construct_float(loader: yaml.SafeLoader, node: yaml.Node) -> float:
    text = loader.construct_scalar(node)
    special = text.lower().lstrip("+-")
    if special == ".inf":
        return -math.inf if text.startswith("-") else math.inf
    if special == ".nan":
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise yaml.constructor.ConstructorError(
            None, None, f"invalid number {text!r}", node.start_mark
        ) from None


CoreSchemaLoader.add_constructor(_BOOL_TAG, _construct_bool)
CoreSchemaLoader.add_constructor(_INT_TAG, _construct_int)
CoreSchemaLoader.add_constructor(_FLOAT_TAG, _construct_float)


def _yaml_error_text(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    text = f"{context}: {problem}" if context else problem
    if mark is not None:
        text += f" (line {mark.line + 1}, column {mark.column + 1})"
    return text


def parse_document(text: str, kind: str) -> Any:
    """Parse YAML or JSON text; raise FileFormatError with a one-line reason."""
    try:
        if kind == "json":
            return json.loads(text)
        return yaml.load(text, Loader=CoreSchemaLoader)  # noqa: S506 - safe subclass
    except json.JSONDecodeError as exc:
        raise FileFormatError(str(exc)) from None
    except yaml.YAMLError as exc:
        raise FileFormatError(_yaml_error_text(exc)) from None


def file_kind(path: str) -> str:
    """The format chosen by the file name's ending (case-sensitive, CONFIG.md §2.2)."""
    if path.endswith((".yaml", ".yml")):
        return "yaml"
    if path.endswith(".json"):
        return "json"
    raise FileFormatError(
        "unsupported file type (the name must end in .yaml, .yml or .json)"
    )


def read_tree(path: str) -> dict:
    """The file's top-level mapping of sections; an empty YAML file is an empty tree."""
    kind = file_kind(path)
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise FileFormatError(f"not valid UTF-8 ({exc.reason})") from None
    except OSError as exc:
        raise FileFormatError(exc.strerror or str(exc)) from None
    tree = parse_document(text, kind)
    if tree is None and kind == "yaml":
        return {}
    if not isinstance(tree, dict):
        raise FileFormatError(f"expected a mapping of sections, got {describe(tree)}")
    return tree


# --- environment ------------------------------------------------------------------------


def env_entries(environ) -> list[tuple[str, list[str], str]]:
    """(variable, key path, value) for every CALLFS_* variable, in name order (§3)."""
    entries = []
    for name in sorted(environ):
        if name.startswith(ENV_PREFIX):
            path = name[len(ENV_PREFIX) :].lower().split("__")
            entries.append((name, path, environ[name]))
    return entries


# --- the nearest known name, for an unknown key's error ------------------------------------

Schema = dict[str, dict[str, Any]]  # section → key → type


def closest(word: str, candidates) -> str | None:
    """A known name for a misspelt one: the same letters in another case, else difflib's."""
    candidates = list(candidates)
    if word.lower() in candidates:
        return word.lower()
    match = difflib.get_close_matches(word.lower(), candidates, n=1, cutoff=0.6)
    return match[0] if match else None


def _owners(schema: Schema, key: str) -> str | None:
    """`a.key or b.key` for a key name that exists in some sections (written in the wrong one)."""
    owners = [f"{section}.{key.lower()}" for section in schema if key.lower() in schema[section]]
    return " or ".join(owners) or None


def nearest_key(schema: Schema, section: str, key: str | None) -> str | None:
    """The known key (dotted) or section nearest to an unknown one, or None."""
    if key is None:  # an unknown section, or a key written without its section
        return closest(section, schema) or _owners(schema, section)
    known = section if section in schema else closest(section, schema)
    if known is not None:
        nearest = closest(key, schema[known])
        if nearest is not None:
            return f"{known}.{nearest}"
    found = _owners(schema, key)
    if found is not None:
        return found
    dotted = [f"{s}.{k}" for s, keys in schema.items() for k in keys]
    match = difflib.get_close_matches(f"{section}.{key}".lower(), dotted, n=1, cutoff=0.75)
    return match[0] if match else None


def nearest_variable_key(schema: Schema, name: str) -> str | None:
    """The key a one-level variable name was probably meant for: `server_listen_addr` (one
    `_` where two belong) → `server.listen_addr`; None when it looks like no key at all."""
    for section, keys in schema.items():
        if name.startswith(section + "_"):
            nearest = closest(name[len(section) + 1 :], keys)
            if nearest is not None:
                return f"{section}.{nearest}"
    forms = {f"{s}__{k}": f"{s}.{k}" for s, keys in schema.items() for k in keys}
    match = difflib.get_close_matches(name, list(forms), n=1, cutoff=0.8)
    return forms[match[0]] if match else None


# --- scalar conversions (§4) -----------------------------------------------------------


def describe(value: Any) -> str:
    """How a value's shape is named in error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a map"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def _float_text(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    text = format(Decimal(repr(value)), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def to_str(value: Any) -> str:
    """Any scalar as text; booleans become "1"/"0" like the reference's weak typing."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _float_text(value)
    raise ConversionError(f"expected a string, got {describe(value)}")


_BOOL_TEXT = {
    **dict.fromkeys(("1", "t", "T", "TRUE", "true", "True"), True),
    **dict.fromkeys(("0", "f", "F", "FALSE", "false", "False", ""), False),
}


def to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return value != 0
    if isinstance(value, str):
        if value in _BOOL_TEXT:
            return _BOOL_TEXT[value]
        raise ConversionError(f"invalid boolean {json.dumps(value)}")
    raise ConversionError(f"expected a boolean, got {describe(value)}")


_INT_TEXT = re.compile(r"[+-]?[0-9][0-9a-zA-Z_]*")


def parse_int(text: str) -> int:
    """Integer text with a base prefix (0x, 0o or a leading 0, 0b); empty is 0."""
    if text == "":
        return 0
    if not _INT_TEXT.fullmatch(text):
        raise ConversionError(f"invalid integer {json.dumps(text)}")
    sign = -1 if text[0] == "-" else 1
    body = text.lstrip("+-")
    try:
        if len(body) > 1 and body[0] == "0" and body[1] in "01234567_":
            number = int(body[1:], 8)
        else:
            number = int(body, 0)
    except ValueError:
        raise ConversionError(f"invalid integer {json.dumps(text)}") from None
    return _int64(sign * number, text)


def _int64(number: int, shown: Any) -> int:
    if not _INT64_MIN <= number <= _INT64_MAX:
        raise ConversionError(f"integer {shown} out of range")
    return number


def to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ConversionError(f"expected an integer, got {describe(value)}")
    if isinstance(value, int):
        return _int64(value, value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConversionError(f"expected an integer, got {_float_text(value)}")
        return _int64(int(value), _float_text(value))
    if isinstance(value, str):
        return parse_int(value)
    raise ConversionError(f"expected an integer, got {describe(value)}")


def to_uint(value: Any) -> int:
    number = to_int(value)
    if number < 0:
        raise ConversionError(f"must not be negative, got {number}")
    return number


# --- durations --------------------------------------------------------------------------

_NS_PER_UNIT = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,  # micro sign
    "\u03bcs": 1_000,  # Greek small letter mu
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_DURATION_PART = re.compile(r"([0-9]*)(?:\.([0-9]*))?([^0-9.]*)")


def parse_duration(text: str) -> float:
    """Go duration syntax ("1m30s", "250ms", "-1.5h", "0") → seconds."""
    quoted = json.dumps(text, ensure_ascii=False)
    negative = text[:1] == "-"
    body = text[1:] if text[:1] in ("-", "+") and text else text
    if body == "0":
        return 0.0
    if body == "":
        raise ConversionError(f"invalid duration {quoted}")
    total_ns = Fraction(0)
    pos = 0
    while pos < len(body):
        match = _DURATION_PART.match(body, pos)
        whole, frac, unit = match.groups()
        if not whole and not frac:
            raise ConversionError(f"invalid duration {quoted}")
        if not unit:
            raise ConversionError(
                f"invalid duration {quoted}: missing unit (ns, us, ms, s, m or h)"
            )
        if unit not in _NS_PER_UNIT:
            raise ConversionError(f"invalid duration {quoted}: unknown unit {unit!r}")
        number = Fraction(int(whole or "0"))
        if frac:
            number += Fraction(int(frac), 10 ** len(frac))
        total_ns += number * _NS_PER_UNIT[unit]
        pos = match.end()
    nanoseconds = int(total_ns)
    if nanoseconds > _INT64_MAX + (1 if negative else 0):
        raise ConversionError(f"invalid duration {quoted}: out of range")
    return (-nanoseconds if negative else nanoseconds) / 1e9


def to_duration(value: Any) -> float:
    """A duration string, or a bare number taken as nanoseconds (§4)."""
    if isinstance(value, str):
        return parse_duration(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConversionError(
            f'expected a duration such as "30s", got {describe(value)}'
        )
    return to_int(value) / 1e9


# --- sizes and modes (CallFS additions) -------------------------------------------------

_SIZE_TEXT = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*")
_PREFIXES = "kmgt"
_BYTES_PER_UNIT = {
    "": 1,
    "b": 1,
    **{p: 1024**n for n, p in enumerate(_PREFIXES, 1)},
    **{p + "ib": 1024**n for n, p in enumerate(_PREFIXES, 1)},
    **{p + "b": 1000**n for n, p in enumerate(_PREFIXES, 1)},
}


def parse_size(text: str) -> int:
    """"16MiB", "5GiB", "8M" (binary), "10MB" (decimal), "1048576" → bytes."""
    match = _SIZE_TEXT.fullmatch(text)
    unit = match and match.group(2).lower()
    if not match or unit not in _BYTES_PER_UNIT:
        raise ConversionError(f'invalid size {json.dumps(text)} (example: "16MiB")')
    return _int64(int(Decimal(match.group(1)) * _BYTES_PER_UNIT[unit]), text)


def to_size(value: Any) -> int:
    if isinstance(value, str):
        return parse_size(value)
    number = to_int(value)
    if number < 0:
        raise ConversionError(f"size must not be negative, got {number}")
    return number


_MODE_TEXT = re.compile(r"(?:0o)?([0-7]+)")


def to_mode(value: Any) -> int:
    """Octal permission digits ("0644"); a YAML number's digits are read as octal too."""
    text = to_str(value)
    match = _MODE_TEXT.fullmatch(text)
    if not match:
        raise ConversionError(f'invalid octal mode {json.dumps(text)} (example: "0644")')
    return int(match.group(1), 8)


# --- lists and maps ---------------------------------------------------------------------


def to_str_list(value: Any) -> list[str]:
    """A list of strings; a single scalar (e.g. from the environment) is a one-element list."""
    if isinstance(value, list):
        return [to_str(item) for item in value]
    if isinstance(value, dict):
        raise ConversionError(f"expected a list, got {describe(value)}")
    return [to_str(value)]


def _to_map(value: Any, convert) -> dict:
    if not isinstance(value, dict):
        raise ConversionError(f"expected a map, got {describe(value)}")
    out = {}
    for key, item in value.items():
        try:
            out[to_str(key)] = convert(item)
        except ConversionError as exc:
            raise ConversionError(f"entry {to_str(key)!r}: {exc}") from None
    return out


def to_str_map(value: Any) -> dict[str, str]:
    return _to_map(value, to_str)


def to_list_map(value: Any) -> dict[str, list[str]]:
    return _to_map(value, lambda item: [] if item is None else to_str_list(item))


# --- the embedded profile's secrets file --------------------------------------------------


def read_secrets(path: str, names: tuple[str, ...]) -> dict[str, str]:
    """The named secrets; refuses a file that other users could read.

    FileNotFoundError passes through: a missing file means "first start".
    """
    try:
        with open(path, "rb") as f:
            mode = stat.S_IMODE(os.fstat(f.fileno()).st_mode)
            data = f.read()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise SecretsFileError(f"failed to load secrets file {path}: {exc.strerror}") from None
    if mode & 0o077:
        raise SecretsFileError(
            f"secrets file {path} must not be accessible by group or others "
            f"(mode {mode:04o}); run: chmod 600 {path}"
        )
    try:
        values = parse_document(data.decode("utf-8"), "yaml")
    except (FileFormatError, UnicodeDecodeError) as exc:
        raise SecretsFileError(f"failed to load secrets file {path}: {exc}") from None
    if not isinstance(values, dict):
        raise SecretsFileError(f"failed to load secrets file {path}: expected a mapping")
    for name in names:
        if not isinstance(values.get(name), str) or not values[name]:
            raise SecretsFileError(
                f"failed to load secrets file {path}: {name} is missing or empty"
            )
    return {name: values[name] for name in names}


def write_secrets(path: str, values: dict[str, str]) -> bool:
    """Publish the secrets file atomically with mode 0600; False when it already exists."""
    directory = os.path.dirname(path)
    text = "# CallFS embedded-profile secrets. Keep this file private (mode 0600).\n"
    text += "".join(f"{name}: {json.dumps(value)}\n" for name, value in values.items())
    temp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        # Created 0600 with O_EXCL: the secrets are never readable by others, not even briefly.
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode())
            f.flush()
            os.fsync(f.fileno())
        return _publish(temp, path)
    except OSError as exc:
        raise SecretsFileError(
            f"failed to create secrets file {path}: {exc.strerror or exc}"
        ) from None
    finally:
        if os.path.lexists(temp):
            os.unlink(temp)


def _publish(temp: str, path: str) -> bool:
    # link() never replaces an existing file, so two first starts agree on one set of secrets.
    try:
        os.link(temp, path)
    except FileExistsError:
        return False
    except OSError:
        os.rename(temp, path)  # filesystems without hard links
    dir_fd = os.open(os.path.dirname(path), os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return True
