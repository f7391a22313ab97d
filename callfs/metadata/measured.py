"""A metadata store whose every operation is timed and reported (callfs_metadata_db_*).

It sits between the cache and the database store, so it sees exactly what reaches the
database: a cache hit is no query. Each operation of the store protocol (base.py) is wrapped
by name; whatever else the store offers (open, close, backend_name) passes through.
"""
import asyncio
import time

from callfs.domain import errors
from callfs.domain.observer import Observer

MEASURED = ("get", "get_many", "list_children", "list_descendants", "create", "set_attributes",
            "move", "path_of", "max_fence", "update_content", "delete", "create_link",
            "consume_link", "sweep_links")


class MeasuredStore:
    def __init__(self, store, observer: Observer):
        self.store = store
        self.backend_name = store.backend_name
        for name in MEASURED:
            setattr(self, name, _measured(name, getattr(store, name), observer))

    def __getattr__(self, name):
        return getattr(self.store, name)


def _measured(operation: str, call, observer: Observer):
    async def measured(*args, **kwargs):
        started = time.perf_counter()
        failed = False
        try:
            return await call(*args, **kwargs)
        except (errors.ServiceUnavailable, errors.InternalError, OSError, TimeoutError):
            failed = True  # the database failed (an answer such as NotFound is no failure)
            raise
        except asyncio.CancelledError:
            raise
        finally:
            observer.metadata_query(operation, time.perf_counter() - started, failed)
    measured.__name__ = operation
    return measured
