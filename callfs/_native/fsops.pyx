# cython: language_level=3
"""Filesystem calls the os module lacks: renameat2(2) with RENAME_EXCHANGE and RENAME_NOREPLACE,
and opening a path beneath a directory without following any symbolic link.

Publishing a staged file by exchanging it with the old one, then unlinking the old one, keeps
the replacement atomic for readers (the name always holds a whole version) while sparing ext4
its replace-via-rename heuristic (auto_da_alloc), which starts writeback of the new file
inside rename(2) and costs more than the write itself. NOREPLACE publishes a new name only
if nothing holds it yet, in one call.

`open_beneath` resolves a relative path under a directory descriptor and never leaves it: no
symbolic link is followed, in any component. Where the kernel has openat2(2) (Linux 5.6) that
is one call with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS; elsewhere (an
older kernel, or a seccomp filter that refuses the call) each component is opened with
O_NOFOLLOW from the one before. Both answer alike: a symbolic link anywhere on the path is
ELOOP, except that O_PATH without O_DIRECTORY opens a final link itself (as lstat looks at it).

The plain-Python specification is tests/unit/fsops_oracle.py.
"""
from cpython.exc cimport PyErr_SetFromErrno, PyErr_SetFromErrnoWithFilenameObject
from libc.errno cimport EAGAIN, EINTR, ELOOP, ENAMETOOLONG, ENOSYS, ENOTDIR, errno
from libc.stdint cimport uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy
from posix.stat cimport S_ISLNK, fstat, fstatat, struct_stat
from posix.unistd cimport close

cdef extern from "stdio.h" nogil:
    int renameat2(int olddirfd, const char* oldpath, int newdirfd, const char* newpath,
                  unsigned int flags)
    unsigned int RENAME_EXCHANGE, RENAME_NOREPLACE

cdef extern from "fcntl.h" nogil:
    int openat(int dir_fd, const char* path, int flags, ...)
    int AT_FDCWD, AT_SYMLINK_NOFOLLOW
    int O_CLOEXEC, O_CREAT, O_DIRECTORY, O_NOFOLLOW, O_PATH, O_TMPFILE

cdef extern from *:
    """
    #include <sys/syscall.h>
    #include <unistd.h>
    #include <errno.h>
    #ifndef SYS_openat2
    #define SYS_openat2 437  /* the same number on every architecture */
    #endif
    static inline void callfs_set_errno(int value) { errno = value; }
    """
    void set_errno "callfs_set_errno"(int value) nogil
    long syscall(long number, ...) nogil
    long SYS_openat2

# linux/openat2.h, which older C libraries lack.
cdef struct open_how:
    uint64_t flags
    uint64_t mode
    uint64_t resolve

cdef enum:
    RESOLVE_NO_MAGICLINKS = 0x02
    RESOLVE_NO_SYMLINKS = 0x04
    RESOLVE_BENEATH = 0x08
    BENEATH = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS
    PATH_LIMIT = 4096  # PATH_MAX: the kernel takes no longer string in one call
    RETRIES = 8        # openat2 answers EAGAIN when a rename raced the lookup


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


# -- opening beneath a directory ---------------------------------------------------------------

cdef long _openat2(int dir_fd, const char* path, int flags, unsigned int mode) noexcept nogil:
    cdef open_how how
    how.flags = <uint64_t><unsigned int>(flags | O_NOFOLLOW | O_CLOEXEC)
    # openat2 refuses a mode unless the call may create a file.
    how.mode = mode if (flags & O_CREAT) or (flags & O_TMPFILE) == O_TMPFILE else 0
    how.resolve = BENEATH
    return syscall(SYS_openat2, dir_fd, path, &how, sizeof(how))


cdef bint _probe() noexcept:
    """One harmless call at import: whether openat2 with our resolve flags is there."""
    cdef long fd = _openat2(AT_FDCWD, ".", O_PATH | O_DIRECTORY, 0)
    if fd < 0:
        return False  # ENOSYS (an older kernel), EPERM (a seccomp filter), EINVAL (old flags)
    close(<int>fd)
    return True


cdef bint _available = _probe()
cdef bint _use_openat2 = _available


cdef bint _is_link(int dir_fd, const char* name) noexcept nogil:
    cdef struct_stat info
    return fstatat(dir_fd, name, &info, AT_SYMLINK_NOFOLLOW) == 0 and S_ISLNK(info.st_mode)


cdef int _walk(int dir_fd, char* path, Py_ssize_t length, int flags,
               unsigned int mode) noexcept nogil:
    """Open `path` (modified in place: each '/' becomes a NUL) one component at a time; -1
    with errno set on failure."""
    cdef int current = dir_fd
    cdef int child, failure
    cdef const char* name = path
    cdef Py_ssize_t i
    for i in range(length):
        if path[i] != b"/":
            continue
        path[i] = 0
        while True:
            child = openat(current, name, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            if child >= 0 or errno != EINTR:
                break
        if child < 0:
            failure = ELOOP if errno == ENOTDIR and _is_link(current, name) else errno
            if current != dir_fd:
                close(current)
            set_errno(failure)
            return -1
        if current != dir_fd:
            close(current)
        current = child
        name = path + i + 1
    while True:
        child = openat(current, name, flags | O_NOFOLLOW | O_CLOEXEC, mode)
        if child >= 0 or errno != EINTR:
            break
    failure = errno
    if child < 0 and failure == ENOTDIR and flags & O_DIRECTORY and _is_link(current, name):
        failure = ELOOP  # O_DIRECTORY names a link ENOTDIR; it is a link all the same
    if current != dir_fd:
        close(current)
    set_errno(failure)
    return child


cdef bytes _checked(str path):
    """Encode `path` and refuse what is no canonical relative path: empty segments, `.` and
    `..`, a leading or trailing slash, NUL. The empty path is the directory itself."""
    if path is None:
        raise TypeError("path must be str, not None")
    cdef bytes raw = path.encode("utf-8", "surrogateescape")
    cdef const unsigned char* p = raw
    cdef Py_ssize_t n = len(raw), i, start = 0, size
    for i in range(n + 1):
        if i < n and p[i] == 0:
            raise ValueError("embedded null byte")
        if i == n or p[i] == b"/":
            size = i - start
            if n and (size == 0 or (size == 1 and p[start] == b".")
                      or (size == 2 and p[start] == b"." and p[start + 1] == b".")):
                raise ValueError(f"not a canonical relative path: {path!r}")
            start = i + 1
    return raw


cdef enum:
    AUTO = -1
    WALK = 0
    OPENAT2 = 1


cdef int _open(int dir_fd, str path, int flags, unsigned int mode, int how) except -1:
    cdef bytes raw = _checked(path) or b"."  # the empty path: the directory itself
    cdef Py_ssize_t n = len(raw)
    cdef const char* p = raw
    cdef long fd = -1
    cdef int tries = 0
    cdef char* copy
    if how == OPENAT2 and not _available:
        set_errno(ENOSYS)
        PyErr_SetFromErrnoWithFilenameObject(OSError, path)
        return -1
    if how == AUTO:
        how = OPENAT2 if _use_openat2 and n < PATH_LIMIT else WALK
    if how == OPENAT2:
        with nogil:
            while True:
                fd = _openat2(dir_fd, p, flags, mode)
                if fd >= 0 or not (errno == EINTR or (errno == EAGAIN and tries < RETRIES)):
                    break
                tries += 1
        if fd >= 0:
            return <int>fd
        if errno != ENOTDIR:
            PyErr_SetFromErrnoWithFilenameObject(OSError, path)
            return -1
        # A file on the way, or a final link opened with O_DIRECTORY: the walk tells which
        # (on this failure's path only).
    copy = <char*>malloc(n + 1)
    if copy == NULL:
        raise MemoryError()
    memcpy(copy, <const char*>raw, n + 1)
    with nogil:
        fd = _walk(dir_fd, copy, n, flags, mode)
    free(copy)
    if fd < 0:
        PyErr_SetFromErrnoWithFilenameObject(OSError, path)
        return -1
    return <int>fd


def open_beneath(int dir_fd, str path, int flags, int mode=0o777):
    """A descriptor of `path` (canonical, relative; "" for the directory itself) beneath
    `dir_fd`, opened with `flags` plus O_NOFOLLOW and O_CLOEXEC, no symbolic link followed on
    the way (ELOOP). ValueError for a path with empty, `.` or `..` segments or a NUL."""
    return _open(dir_fd, path, flags, <unsigned int>mode, AUTO)


def open_beneath_openat2(int dir_fd, str path, int flags, int mode=0o777):
    """`open_beneath` by openat2(2); OSError (ENOSYS) where the kernel lacks it."""
    return _open(dir_fd, path, flags, <unsigned int>mode, OPENAT2)


def open_beneath_walk(int dir_fd, str path, int flags, int mode=0o777):
    """`open_beneath` one component at a time, as where the kernel lacks openat2(2)."""
    return _open(dir_fd, path, flags, <unsigned int>mode, WALK)


def stat_beneath(int dir_fd, str path):
    """(st_mode, st_ino, st_dev, st_nlink, st_size, st_mtime_ns) of `path` beneath `dir_fd`,
    as lstat(2) tells them (a final link is described, not followed; a link on the way is
    ELOOP)."""
    cdef int fd = _open(dir_fd, path, O_PATH, 0, AUTO)
    cdef struct_stat info
    cdef int rc = fstat(fd, &info)
    close(fd)
    if rc != 0:
        PyErr_SetFromErrno(OSError)
    return (info.st_mode, info.st_ino, info.st_dev, info.st_nlink, info.st_size,
            info.st_mtim.tv_sec * 1_000_000_000 + info.st_mtim.tv_nsec)


def openat2_available():
    """Whether this kernel opens beneath a directory in one call (openat2, probed at import)."""
    return _available


def use_openat2(bint wanted):
    """Open by openat2 (where available) or by the walk; returns the previous choice."""
    global _use_openat2
    previous = _use_openat2
    _use_openat2 = wanted and _available
    return previous
