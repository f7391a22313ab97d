"""A read handle whose bytes arrive over HTTP (an S3 object, a file a peer instance owns):
the opening GET's body serves a read of the whole; any other range, or a second read, is a
ranged GET conditional on the version opened (its ETag), so a newer version fails the read
rather than mixing into it. The body is read as the client takes it, or handed over as its
socket (`socket_body`) for the HTTP layer to splice."""

READ_PIECE = 4 * 1024 * 1024  # bytes at most per piece handed on


class StreamedReadHandle:
    """`size` and `etag` of the version opened; no descriptor (`fd` -1) and no stamp.
    Subclasses say how a range is fetched (`_ranged`) and name the object (`what`)."""

    fd = -1
    mtime_ns = None  # the metadata is the truth; these bytes carry no stamp CallFS set

    def __init__(self, size: int, etag: str | None, body=None):
        self.size = size
        self.etag = etag
        self._body = body  # the opening GET's body: the whole object, as it was then

    @property
    def what(self) -> str:
        return "the object"

    async def _ranged(self, offset: int, length: int):
        """A body of `length` bytes from `offset` of the version opened (read_some, close)."""
        raise NotImplementedError

    async def chunks(self, offset: int, length: int, piece: int = READ_PIECE):
        if length <= 0:
            return
        body, self._body = self._body, None
        if body is None or offset != 0 or length != self.size:
            if body is not None:
                body.close()
            body = await self._ranged(offset, length)
        # What has come, as it comes: the connection reads ahead up to its buffer's bound
        # while the client takes this, and waits for the client beyond it.
        left = length
        try:
            while left > 0:
                data = await body.read_some(min(piece, left))
                if not data:
                    raise OSError(f"{self.what} ended {left} bytes early")
                left -= len(data)
                yield data
        finally:
            body.close()

    def socket_body(self, offset: int, length: int):
        """The whole object, from the opening GET's socket (plain HTTP): the HTTP layer
        splices it to the client. None for a range, over TLS, or once read."""
        if self._body is None or offset != 0 or length != self.size or length == 0:
            return None
        return self._body.detach()

    def close(self) -> None:
        body, self._body = self._body, None
        if body is not None:
            body.close()
