"""Whether a connection reads from its socket, and why not: the one owner of the transport's
pause_reading/resume_reading.

Each reason is taken by one party and given back by the same party when its cause ends; the
transport reads again when no reason is left. The connection can say, for every reason it
holds, what pending work holds it (`HttpProtocol.stray_pauses`): a reason with none is a
lost wake-up, which the deadline sweep reports and repairs, and the tests look for.
"""

BODY = 1       # the body being parsed waits in the socket for its handler, or fills its buffer
PIPELINE = 2   # too many requests are queued behind the one being answered
REFUSED = 4    # the parser refused a message: its error goes out, then the connection closes
SPLICE = 8     # the body moves by splice: the socket is the handler's until the body ends
UPGRADE = 16   # an upgrade's head is parsed: what follows is the session's, once it exists
SESSION = 32   # a WebSocket session's buffer is full until its handler reads

NAMES = {BODY: "body", PIPELINE: "pipeline", REFUSED: "refused", SPLICE: "splice",
         UPGRADE: "upgrade", SESSION: "session"}


def describe(reasons: int) -> str:
    return ",".join(name for bit, name in NAMES.items() if reasons & bit) or "none"


class ReadGate:
    """The reasons reading is paused, and the transport calls that follow from them."""

    __slots__ = ("_transport", "reasons")

    def __init__(self):
        self._transport = None
        self.reasons = 0

    def attach(self, transport) -> None:
        self._transport = transport

    def pause(self, reason: int) -> None:
        if not self.reasons and self._open():
            self._transport.pause_reading()
        self.reasons |= reason

    def resume(self, reason: int) -> bool:
        """Give `reason` back; True when reading starts again because of it."""
        if not self.reasons & reason:
            return False
        self.reasons &= ~reason
        if self.reasons:
            return False
        if self._open():
            self._transport.resume_reading()
        return True

    def _open(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()
