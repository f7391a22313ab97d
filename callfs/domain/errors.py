"""One error hierarchy: each class knows its HTTP status and API error code (API.md §8.2).

Handlers raise; the router renders `{"code": ..., "message": ...}`. Engine code translates storage
exceptions into these at its boundary, so HTTP code never inspects OS or database errors.
"""


class CallFSError(Exception):
    status = 500
    code = "INTERNAL_ERROR"
    message = "an internal error occurred"
    # A finding an operator must see (every 5xx, and these): logged with the request id; the
    # client gets the class's message, the log the instance's.
    logged = False

    def __init__(self, message: str | None = None):
        if message is not None:
            self.message = message
        super().__init__(self.message)


class NotFound(CallFSError):
    status, code, message = 404, "FILE_NOT_FOUND", "file not found"


class AlreadyExists(CallFSError):
    status, code, message = 409, "FILE_ALREADY_EXISTS", "file already exists"


class AuthenticationFailed(CallFSError):
    status, code, message = 401, "AUTHENTICATION_FAILED", "authentication failed"


class PermissionDenied(CallFSError):
    status, code, message = 403, "PERMISSION_DENIED", "permission denied"


class BadRequest(CallFSError):
    status, code, message = 400, "BAD_REQUEST", "bad request"


class InvalidPath(CallFSError):
    status, code, message = 400, "INVALID_PATH", "invalid path"


class IsADirectory(CallFSError):
    status, code, message = 400, "IS_A_DIRECTORY", "path is a directory"


class NotADirectory(CallFSError):
    status, code, message = 409, "NOT_A_DIRECTORY", "not a directory"


class DirectoryNotEmpty(CallFSError):
    status, code, message = 409, "DIRECTORY_NOT_EMPTY", "directory not empty"


class PayloadTooLarge(CallFSError):
    status, code, message = 413, "PAYLOAD_TOO_LARGE", "payload too large"


class PreconditionFailed(CallFSError):
    status, code, message = 412, "PRECONDITION_FAILED", "precondition failed"


class RangeNotSatisfiable(CallFSError):
    status, code, message = 416, "RANGE_NOT_SATISFIABLE", "range not satisfiable"


class LockTimeout(CallFSError):
    status, code, message = 503, "LOCK_TIMEOUT", "the path is locked by another writer; try again"


class WriteConflict(LockTimeout):
    """The entry changed under a writer that believed it held the lock (its lease expired)."""

    message = "another writer changed the file; try again"


class ParentMoved(WriteConflict):
    """A directory above the entry moved while the entry was written there."""

    message = "a parent directory moved while the file was written; try again"


class ServiceUnavailable(CallFSError):
    status, code, message = 503, "SERVICE_UNAVAILABLE", "a storage service is unavailable"


class InternalError(CallFSError):
    pass


class PeerUnavailable(CallFSError):
    """The instance that owns an entry could not be reached, or failed a forwarded request
    (API.md §13.2); the instance's message, for the log, says which and how."""

    status, code = 502, "PEER_UNAVAILABLE"
    message = "the instance that holds the file is unavailable"


class PeerTimedOut(PeerUnavailable):
    status = 504


class BytesMissing(NotFound):
    """A file the metadata records has no bytes in storage (API.md §9.1: 404): answered as a
    missing file, and logged, since only a change behind the server's back does that."""

    logged = True


class StorageInconsistent(InternalError):
    """A file's bytes in storage are not what its metadata records: not a regular file, or of
    another size (a replaced disk, a change behind the server's back). Nothing is
    served or overwritten until an operator repairs the entry or its bytes. The instance's
    message, for the log, says what was found; the client sees the class's."""

    message = "the file's stored bytes do not match its metadata"


class ClientGone(Exception):
    """The client closed the connection or stopped sending a body; nothing is answered."""
