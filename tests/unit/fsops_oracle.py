"""Plain-Python specification of `callfs._native.fsops`.

The same end states and the same exceptions as renameat2(2), built from the os module: an
exchange is three renames through a temporary name (not atomic: a reader may find one name
missing for a moment, which is why the native module exists), a no-replace rename is link and
unlink (or, for a directory, an existence check and a rename: not atomic either).
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
