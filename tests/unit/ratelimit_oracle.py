"""Plain-Python specification of callfs._native.ratelimit: the same table, in lists.

A bucket per (endpoint, address): `rate` tokens per second up to `capacity` (API.md §11),
counted in fixed point (TOKEN units a token, so a bucket gains `rate` units per ns and every
answer is exact). A clock behind the bucket's last refill refills nothing. The table is groups
of 8 slots; a key hashes to one group. A key not in its group takes an empty slot, else the
first slot whose bucket has refilled to capacity (forgetting it changes no answer), else the
slot refilled longest ago (the first of equals).
"""
import ipaddress

LINKS_GENERATE = 0
DOWNLOAD = 1
RATES = {LINKS_GENERATE: (100, 1), DOWNLOAD: (10, 5)}  # tokens/s, capacity
TOKEN = 1_000_000_000
IDLE_NS = 600 * 1_000_000_000  # API.md §11: idle entries may be forgotten after 10 minutes
GROUP_SLOTS = 8
DEFAULT_SLOTS = 1 << 16
MAX_SLOTS = 1 << 26
_MASK = (1 << 64) - 1


def address_words(address: str) -> tuple[int, int]:
    """The address as two 64-bit words: IPv4 as ::ffff:a.b.c.d, an IPv6 zone dropped, "" as
    ::. ValueError when it is not an IP address."""
    if address == "":
        return 0, 0
    if ":" in address:
        host, sep, zone = address.partition("%")
        if sep and not zone:
            raise ValueError(f"not an IP address: {address!r}")
        try:
            packed = ipaddress.IPv6Address(host).packed
        except ipaddress.AddressValueError:
            raise ValueError(f"not an IP address: {address!r}") from None
    else:
        try:
            packed = b"\0" * 10 + b"\xff\xff" + ipaddress.IPv4Address(address).packed
        except ipaddress.AddressValueError:
            raise ValueError(f"not an IP address: {address!r}") from None
    return int.from_bytes(packed[:8], "big"), int.from_bytes(packed[8:], "big")


def _mix(x: int) -> int:
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & _MASK
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def group_index(groups: int, endpoint: int, hi: int, lo: int) -> int:
    h = _mix(hi ^ _mix(lo ^ ((endpoint + 1) << 56)))
    return (h * groups) >> 64


def refilled(endpoint: int, tokens: int, last: int, now: int) -> int:
    rate, capacity = RATES[endpoint]
    if now <= last:
        return tokens
    return min(capacity * TOKEN, tokens + (now - last) * rate)


def table_bytes(slots: int = DEFAULT_SLOTS) -> int:
    if slots < 1 or slots > MAX_SLOTS:
        raise ValueError("slots out of range")
    return 64 + -(-slots // GROUP_SLOTS) * 384


class RateLimiter:
    def __init__(self, slots: int = DEFAULT_SLOTS):
        table_bytes(slots)
        self.groups = -(-slots // GROUP_SLOTS)
        self._table: dict[int, list] = {}  # group index -> 8 slots: None | [endpoint, words, tokens, last]

    @property
    def slots(self) -> int:
        return self.groups * GROUP_SLOTS

    def _locate(self, endpoint: int, address: str):
        if endpoint not in RATES:
            raise ValueError(f"unknown endpoint {endpoint}")
        words = address_words(address)
        index = group_index(self.groups, endpoint, *words)
        return self._table.setdefault(index, [None] * GROUP_SLOTS), words

    def group_of(self, endpoint: int, address: str) -> int:
        words = address_words(address)
        if endpoint not in RATES:
            raise ValueError(f"unknown endpoint {endpoint}")
        return group_index(self.groups, endpoint, *words)

    def allow_at(self, endpoint: int, address: str, now_ns: int) -> bool:
        if now_ns < 0:
            raise ValueError("a monotonic time is not negative")
        group, words = self._locate(endpoint, address)
        slot = next((s for s in group if s is not None and s[0] == endpoint and s[1] == words),
                    None)
        if slot is not None:
            if now_ns > slot[3]:
                slot[2] = refilled(endpoint, slot[2], slot[3], now_ns)
                slot[3] = now_ns
        else:
            at = self._victim(group, now_ns)
            slot = group[at] = [endpoint, words, RATES[endpoint][1] * TOKEN, now_ns]
        if slot[2] >= TOKEN:
            slot[2] -= TOKEN
            return True
        return False

    @staticmethod
    def _victim(group: list, now: int) -> int:
        if None in group:
            return group.index(None)
        for i, (endpoint, _, tokens, last) in enumerate(group):
            if refilled(endpoint, tokens, last, now) >= RATES[endpoint][1] * TOKEN:
                return i
        return min(range(GROUP_SLOTS), key=lambda i: group[i][3])

    def bucket(self, endpoint: int, address: str):
        group, words = self._locate(endpoint, address)
        for s in group:
            if s is not None and s[0] == endpoint and s[1] == words:
                return s[2], s[3]
        return None
