"""Numbered migrations: `NNN_name.sql` files applied in order, recorded in `schema_migrations`."""
from importlib import resources


def migration_files(dialect: str) -> list[tuple[int, str, str]]:
    """(number, name, sql) for every migration of `dialect`, in order."""
    folder = resources.files("callfs.metadata") / "migrations" / dialect
    found = []
    for item in folder.iterdir():
        name = item.name
        if name.endswith(".sql") and name[:3].isdigit():
            found.append((int(name[:3]), name, item.read_text(encoding="utf-8")))
    found.sort()
    return found


def split_statements(sql: str) -> list[str]:
    """Statements of a migration file; files hold no semicolons inside literals."""
    lines = [line for line in sql.splitlines() if not line.strip().startswith("--")]
    return [stmt.strip() for stmt in "\n".join(lines).split(";") if stmt.strip()]
