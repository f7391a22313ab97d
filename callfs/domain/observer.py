"""What the engine and the layers below it report as they work (callfs/observability/metrics.py's Metrics implements
it; `Silent` when nobody listens). Operations and outcomes are the label values the metrics
declare."""
from typing import Protocol


class Observer(Protocol):
    def file_operation(self, operation: str, backend: str) -> None:
        """create, write, read, delete, move, copy, mkdir, list: one per attempt."""

    def backend_operation(self, backend: str, operation: str, seconds: float) -> None:
        """A backend's write (the body staged), read (an open), delete, move or copy."""

    def link_generated(self) -> None: ...

    def link_consumed(self, status: str) -> None:
        """success, expired, invalid, not_found."""

    def recovered(self, action: str) -> None:
        """taken_back, rolled_forward, intent_removed, restored, move_finished."""

    def error(self, component: str, error_type: str) -> None: ...

    def metadata_query(self, operation: str, seconds: float, failed: bool) -> None:
        """One metadata store operation (the database's, not the cache's)."""


class Silent:
    """An observer that notes nothing."""

    def __getattr__(self, name):
        return _nothing


def _nothing(*args, **kwargs) -> None:
    return None
