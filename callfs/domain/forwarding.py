"""Requests one instance forwards to another (API.md §13.4): the header that marks them, and
the mark of the request being served. A forwarded request reaches the instance that owns the
entry, which serves it itself; should its metadata name yet another owner (a misconfigured
peer address, instances sharing an ID), it refuses rather than forward again, so a request
never travels in a loop."""
import contextvars

FORWARDED_BY = "X-CallFS-Forwarded-By"

# The instance that forwarded the request being served (only when it authenticated with the
# internal secret), else None.
forwarded_by: contextvars.ContextVar[str | None] = contextvars.ContextVar("forwarded_by",
                                                                          default=None)
