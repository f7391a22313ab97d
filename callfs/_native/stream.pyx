# cython: language_level=3
"""Zero-copy transfers between a socket and a file, one non-blocking step at a time.

Downloads: sendfile(2) from a file region to the socket. Uploads: splice(2) socket → pipe →
file (splice needs a pipe on one side). Neither blocks on the socket: the event loop calls a
step when the socket is ready, and a step moves what the kernel has and reports how far it got.
File bytes never become Python objects. These functions decide nothing: the protocol owns the
socket, its deadlines and its flow control.

The plain-Python specification is tests/unit/stream_oracle.py (os.sendfile, os.read/os.write).
"""
from libc.errno cimport EAGAIN, EINTR, errno
from posix.types cimport off_t
from posix.unistd cimport close

cdef extern from "fcntl.h" nogil:
    ssize_t splice(int fd_in, off_t* off_in, int fd_out, off_t* off_out, size_t length,
                   unsigned int flags)
    int fcntl(int fd, int cmd, ...)
    int pipe2(int pipefd[2], int flags)
    int O_CLOEXEC, O_NONBLOCK, O_APPEND, F_GETFL
    unsigned int SPLICE_F_MOVE, SPLICE_F_NONBLOCK
    int F_SETPIPE_SZ, F_GETPIPE_SZ

cdef extern from "sys/sendfile.h" nogil:
    ssize_t sendfile(int out_fd, int in_fd, off_t* offset, size_t count)

from cpython.exc cimport PyErr_SetFromErrno

# Bytes one step moves at most before it lets the event loop serve other connections.
cdef enum:
    STEP_LIMIT = 4 * 1024 * 1024
    PIPE_SIZE = 1024 * 1024


cdef int _raise_errno() except -1:
    PyErr_SetFromErrno(OSError)
    return -1


cpdef long long send_file(int sock, int fd, long long offset, long long count) except -2:
    """Send up to `count` bytes of `fd` from `offset` to the non-blocking `sock`.

    Returns the bytes sent (> 0), 0 when the file ends before `offset` (it shrank), or -1 when
    the socket cannot take more now. Other failures (a reset peer) raise OSError."""
    cdef off_t off = offset
    cdef ssize_t sent
    cdef long long total = 0
    if count <= 0:
        return 0
    while total < count and total < STEP_LIMIT:
        with nogil:
            sent = sendfile(sock, fd, &off, <size_t>min(count - total, STEP_LIMIT - total))
        if sent > 0:
            total += sent
            continue
        if sent == 0:
            break
        if errno == EINTR:
            continue
        if errno == EAGAIN:
            return total if total > 0 else -1
        _raise_errno()
    return total


cdef class _Pipe:
    """A private non-blocking pipe, the kernel-side buffer splice(2) needs on one side."""

    def __cinit__(self):
        self.pipe_r = -1
        self.pipe_w = -1

    def __init__(self):
        cdef int fds[2]
        if pipe2(fds, O_CLOEXEC | O_NONBLOCK) != 0:
            _raise_errno()
        self.pipe_r, self.pipe_w = fds[0], fds[1]
        # A bigger pipe means fewer steps per megabyte; the kernel may refuse (pipe-max-size).
        fcntl(self.pipe_w, F_SETPIPE_SZ, <int>PIPE_SIZE)
        cdef int size = fcntl(self.pipe_w, F_GETPIPE_SZ)
        self.capacity = size if size > 0 else 65536

    def __dealloc__(self):
        self._close()

    cdef void _close(self) noexcept:
        if self.pipe_r >= 0:
            close(self.pipe_r)
            self.pipe_r = -1
        if self.pipe_w >= 0:
            close(self.pipe_w)
            self.pipe_w = -1

    def close(self):
        self._close()


cdef class SpliceSink(_Pipe):
    """Moves bytes from a non-blocking socket into a file through a private pipe."""

    def __init__(self):
        _Pipe.__init__(self)
        self.broken = False
        self.moved = 0

    cdef int _flush(self, int fd, size_t pending) except -1:
        """Everything in the pipe goes to the file (a disk write: it may block, as write does)."""
        cdef ssize_t n
        while pending > 0:
            with nogil:
                n = splice(self.pipe_r, NULL, fd, NULL, pending, SPLICE_F_MOVE)
            if n > 0:
                pending -= n
            elif n < 0 and errno == EINTR:
                continue
            elif n < 0 and errno == EAGAIN:
                continue  # the pipe end is non-blocking; the data is there, try again
            else:
                _raise_errno()
        return 0

    cpdef long long step(self, int sock, int fd, long long remaining) except -2:
        """Move up to `remaining` bytes from `sock` to `fd`.

        Returns the bytes moved (> 0), -1 when the socket has nothing now, or 0 when the peer
        closed before `remaining` was reached. Errors raise OSError."""
        if self.pipe_r < 0:
            raise ValueError("the sink is closed")
        if self.broken:
            raise ValueError("the sink failed to write; its pipe may hold bytes of the socket")
        cdef int flags = fcntl(fd, F_GETFL)
        if flags < 0:
            _raise_errno()
        if flags & O_APPEND:
            # splice(2) refuses O_APPEND files only after it has taken the socket's bytes.
            raise ValueError("splice cannot write to a file opened with O_APPEND")
        cdef long long total = 0
        cdef ssize_t n
        cdef size_t want
        while remaining > 0 and total < STEP_LIMIT:
            want = <size_t>min(remaining, <long long>self.capacity)
            with nogil:
                n = splice(sock, NULL, self.pipe_w, NULL, want, SPLICE_F_MOVE | SPLICE_F_NONBLOCK)
            if n > 0:
                self.broken = True  # until the pipe is empty again
                self._flush(fd, n)
                self.broken = False
                total += n
                remaining -= n
                self.moved += n
                continue
            if n == 0:
                return total if total > 0 else 0
            if errno == EINTR:
                continue
            if errno == EAGAIN:
                return total if total > 0 else -1
            _raise_errno()
        return total


cdef class SpliceRelay(_Pipe):
    """Moves bytes from one non-blocking socket to another through a private pipe (a proxied
    answer's body: the peer's socket to the client's), never through user space. The pipe may
    hold bytes between steps, when the destination could not take them: `pending` says how
    many, and they go first at the next step."""

    def __init__(self):
        _Pipe.__init__(self)
        self.pending = 0
        self.moved = 0

    cdef long long _deliver(self, int dst) except -2:
        """Pipe → `dst` until the pipe is empty or `dst` is full; the bytes delivered."""
        cdef ssize_t n
        cdef long long total = 0
        while self.pending > 0:
            with nogil:
                n = splice(self.pipe_r, NULL, dst, NULL, <size_t>self.pending,
                           SPLICE_F_MOVE | SPLICE_F_NONBLOCK)
            if n > 0:
                self.pending -= n
                total += n
                continue
            if n < 0 and errno == EINTR:
                continue
            if n < 0 and errno == EAGAIN:
                break
            _raise_errno()
        self.moved += total
        return total

    cpdef long long step(self, int src, int dst, long long remaining) except -2:
        """Move up to `remaining` bytes (counting those the pipe holds) from `src` to `dst`.

        Returns the bytes delivered to `dst` (> 0); else -1 when `src` has nothing now, -3
        when `dst` can take nothing now, 0 when `src` closed with nothing left to deliver.
        Errors raise OSError."""
        if self.pipe_r < 0:
            raise ValueError("the relay is closed")
        cdef long long total = 0
        cdef long long got
        cdef ssize_t n
        cdef bint src_dry = False
        while total < STEP_LIMIT:
            if self.pending > 0:
                got = self._deliver(dst)
                total += got
                if self.pending > 0:
                    return total if total > 0 else -3
            if remaining - total <= 0 or src_dry:
                break
            with nogil:
                n = splice(src, NULL, self.pipe_w, NULL,
                           <size_t>min(remaining - total, <long long>self.capacity),
                           SPLICE_F_MOVE | SPLICE_F_NONBLOCK)
            if n > 0:
                self.pending = n
                continue
            if n == 0:
                return total
            if errno == EINTR:
                continue
            if errno == EAGAIN:
                src_dry = True
                continue
            _raise_errno()
        if total > 0:
            return total
        return -1 if src_dry else 0
