"""Plain-Python specification of `callfs._native.generations`.

The same API over a dict of [begun, ended] per slot, private to one object: what the native
table computes, without the sharing. The table starts from the counters the file holds (all
zero for a new file), read once when it is made. tests/unit/test_generations.py checks with
hypothesis that native and oracle agree on every call, and that the native table is shared.

A path hashes (FNV-1a 64 over its UTF-8 bytes) to slot 1 + hash % slots; slot 0 is global.
A stamp is ((slot begun mod 2^40) << 23) | (global begun mod 2^23), or -1 while begun != ended
for the path's slot or for the global slot (a write is in progress: cache nothing).
"""
import errno
import fcntl
import os
import struct

FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
WORD = 2**64  # the counters are 64-bit words: they wrap
SLOT_BITS = 40
GLOBAL_BITS = 23
MAX_SLOTS = 2**32  # far more than any cache needs; sizes stay far from overflow


def fnv1a(text):
    """FNV-1a 64 of the UTF-8 bytes (UnicodeEncodeError for lone surrogates)."""
    if not isinstance(text, str):
        raise TypeError("fnv1a() needs a str")
    h = FNV_OFFSET
    for byte in text.encode("utf-8"):
        h = ((h ^ byte) * FNV_PRIME) % WORD
    return h


def table_bytes(slots):
    """The size of the file: [begun, ended], 8 bytes each, for the global slot and `slots`."""
    if not 1 <= slots <= MAX_SLOTS:
        raise ValueError(f"a generation table has 1 to {MAX_SLOTS} slots")
    return (slots + 1) * 16


def stamp_of(slot_begun, slot_ended, global_begun, global_ended):
    if slot_begun != slot_ended or global_begun != global_ended:
        return -1
    return ((slot_begun % 2**SLOT_BITS) << GLOBAL_BITS) | (global_begun % 2**GLOBAL_BITS)


class GenerationTable:
    """Begun/ended counters per path slot. `fd` must be open for reading and writing and hold
    at least table_bytes(slots) bytes."""

    def __init__(self, fd, slots):
        length = table_bytes(slots)  # ValueError for a slot count out of range
        size = os.fstat(fd).st_size  # OSError (EBADF) for a closed descriptor
        if size < length:  # a mapping past the end of the file would fault (SIGBUS)
            raise ValueError("the file is smaller than the table")
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE != os.O_RDWR:
            raise OSError(errno.EACCES, os.strerror(errno.EACCES))
        self.slots = slots
        raw = os.pread(fd, length, 0)
        words = struct.unpack(f"={2 * (slots + 1)}Q", raw)
        self._counters = {slot: [words[2 * slot], words[2 * slot + 1]] for slot in range(slots + 1)}

    def slot_of(self, path):
        return 1 + fnv1a(path) % self.slots

    def _bump(self, slot, which):
        self._counters[slot][which] = (self._counters[slot][which] + 1) % WORD

    def begin(self, path):
        self._bump(self.slot_of(path), 0)

    def end(self, path):
        self._bump(self.slot_of(path), 1)

    def begin_all(self):
        self._bump(0, 0)

    def end_all(self):
        self._bump(0, 1)

    def stamp(self, path):
        slot_begun, slot_ended = self._counters[self.slot_of(path)]
        global_begun, global_ended = self._counters[0]
        return stamp_of(slot_begun, slot_ended, global_begun, global_ended)

    def unchanged(self, path, stamp):
        return stamp >= 0 and self.stamp(path) == stamp

    def counters(self, slot):
        if not 0 <= slot <= self.slots:
            raise IndexError(slot)
        return tuple(self._counters[slot])
