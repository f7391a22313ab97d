"""Plain-Python specification of `callfs._native.fsops`.

The same end states and the same exceptions as renameat2(2), built from the os module: an
exchange is three renames through a temporary name (not atomic: a reader may find one name
missing for a moment, which is why the native module exists), a no-replace rename is link and
unlink (or, for a directory, an existence check and a rename: not atomic either).
Opening beneath a directory is os.open with dir_fd and O_NOFOLLOW, one component at a time
(what the native walk does, and what openat2(2) with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS
does in one call).
tests/unit/test_fsops.py checks that both leave the same tree and raise the same errors.

Directories are given as descriptors (AT_FDCWD for the working directory), names as str,
encoded like os.fsencode. Names that are ancestors of each other are out of scope here.
"""
import errno
import os
import stat
import uuid

AT_FDCWD = -100


def _dir(fd):
    return None if fd == AT_FDCWD else fd


def _check_names(*names):
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"a name must be str, not {type(name).__name__}")


def rename_exchange(src_dir, src, dst_dir, dst):
    """Swap two existing names. FileNotFoundError when either is missing."""
    _check_names(src, dst)
    a = os.lstat(src, dir_fd=_dir(src_dir))
    b = os.lstat(dst, dir_fd=_dir(dst_dir))
    if os.path.samestat(a, b):  # one inode under both names: nothing changes
        return
    tmp = os.path.join(os.path.dirname(src), f".exchange-{uuid.uuid4().hex}")
    os.rename(src, tmp, src_dir_fd=_dir(src_dir), dst_dir_fd=_dir(src_dir))
    os.rename(dst, src, src_dir_fd=_dir(dst_dir), dst_dir_fd=_dir(src_dir))
    os.rename(tmp, dst, src_dir_fd=_dir(src_dir), dst_dir_fd=_dir(dst_dir))


def rename_noreplace(src_dir, src, dst_dir, dst):
    """Rename `src` to `dst` only when nothing holds `dst`: FileNotFoundError for a missing
    source (checked first), FileExistsError for a taken destination."""
    _check_names(src, dst)
    st = os.lstat(src, dir_fd=_dir(src_dir))
    if not stat.S_ISDIR(st.st_mode):  # a file or a symlink: link(2) fails if dst exists
        os.link(src, dst, src_dir_fd=_dir(src_dir), dst_dir_fd=_dir(dst_dir),
                follow_symlinks=False)
        os.unlink(src, dir_fd=_dir(src_dir))
        return
    try:
        os.lstat(dst, dir_fd=_dir(dst_dir))
    except FileNotFoundError:
        os.rename(src, dst, src_dir_fd=_dir(src_dir), dst_dir_fd=_dir(dst_dir))
    else:
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), dst)


# -- opening beneath a directory ---------------------------------------------------------------

def _segments(path):
    """The components of a canonical relative path ("" → none); ValueError otherwise."""
    if not isinstance(path, str):
        raise TypeError(f"path must be str, not {type(path).__name__}")
    raw = path.encode("utf-8", "surrogateescape")
    if b"\0" in raw:
        raise ValueError("embedded null byte")
    if not raw:
        return []
    segments = raw.split(b"/")
    if any(s in (b"", b".", b"..") for s in segments):
        raise ValueError(f"not a canonical relative path: {path!r}")
    return [os.fsdecode(s) for s in segments]


def _is_link(name, dir_fd):
    try:
        return stat.S_ISLNK(os.lstat(name, dir_fd=dir_fd).st_mode)
    except OSError:
        return False


def _loop(name):
    return OSError(errno.ELOOP, os.strerror(errno.ELOOP), name)


def open_beneath(dir_fd, path, flags, mode=0o777):
    """A descriptor of `path` beneath `dir_fd`; a symbolic link anywhere on the way is ELOOP
    (O_PATH without O_DIRECTORY opens a final link itself)."""
    segments = _segments(path) or ["."]
    current = dir_fd
    try:
        for name in segments[:-1]:
            try:
                child = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                dir_fd=current)
            except NotADirectoryError:
                if _is_link(name, current):
                    raise _loop(path) from None
                raise
            if current != dir_fd:
                os.close(current)
            current = child
        try:
            return os.open(segments[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode,
                           dir_fd=current)
        except NotADirectoryError:
            if flags & os.O_DIRECTORY and _is_link(segments[-1], current):
                raise _loop(path) from None
            raise
    finally:
        if current != dir_fd:
            os.close(current)


open_beneath_openat2 = open_beneath_walk = open_beneath


def stat_beneath(dir_fd, path):
    """(st_mode, st_ino, st_dev, st_nlink, st_size, st_mtime_ns), as lstat tells them."""
    fd = open_beneath(dir_fd, path, os.O_PATH)
    try:
        info = os.fstat(fd)
    finally:
        os.close(fd)
    return (info.st_mode, info.st_ino, info.st_dev, info.st_nlink, info.st_size,
            info.st_mtime_ns)
