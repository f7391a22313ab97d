# cython: language_level=3
"""Filesystem calls the os module lacks: renameat2(2) with RENAME_EXCHANGE and RENAME_NOREPLACE.

Publishing a staged file by exchanging it with the old one, then unlinking the old one, keeps
the replacement atomic for readers (the name always holds a whole version) while sparing ext4
its replace-via-rename heuristic (auto_da_alloc), which starts writeback of the new file
inside rename(2) and costs more than the write itself. NOREPLACE publishes a new name only
if nothing holds it yet, in one call.

The plain-Python specification is tests/unit/fsops_oracle.py.
"""
from cpython.exc cimport PyErr_SetFromErrnoWithFilenameObject
from libc.errno cimport EINTR, errno

cdef extern from "stdio.h" nogil:
    int renameat2(int olddirfd, const char* oldpath, int newdirfd, const char* newpath,
                  unsigned int flags)
    unsigned int RENAME_EXCHANGE, RENAME_NOREPLACE


cdef int _rename2(int src_dir, str src, int dst_dir, str dst, unsigned int flags) except -1:
    cdef bytes a = src.encode("utf-8", "surrogateescape")
    cdef bytes b = dst.encode("utf-8", "surrogateescape")
    if b"\0" in a or b"\0" in b:
        raise ValueError("embedded null byte")  # as os.rename: C would cut the name short
    cdef const char* pa = a
    cdef const char* pb = b
    cdef int rc
    while True:
        with nogil:
            rc = renameat2(src_dir, pa, dst_dir, pb, flags)
        if rc == 0:
            return 0
        if errno != EINTR:
            PyErr_SetFromErrnoWithFilenameObject(OSError, dst)
            return -1


def rename_exchange(int src_dir, str src not None, int dst_dir, str dst not None):
    """Swap two existing names atomically. FileNotFoundError when either is missing; OSError
    (EINVAL) where the filesystem cannot exchange."""
    _rename2(src_dir, src, dst_dir, dst, RENAME_EXCHANGE)


def rename_noreplace(int src_dir, str src not None, int dst_dir, str dst not None):
    """Rename only when `dst` does not exist (FileExistsError otherwise), atomically."""
    _rename2(src_dir, src, dst_dir, dst, RENAME_NOREPLACE)
