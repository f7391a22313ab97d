"""callfs._native.fsops against its plain-Python oracle: same tree afterwards, same error.

Each example builds the same random tree twice (files with content, directories empty or not,
symlinks, missing names, in two directories), runs the native call on one and the oracle on
the other, and compares the trees and the exceptions.
"""
import errno
import os
import stat
import sys
import tempfile

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:  # the oracle sits beside this file
    sys.path.insert(0, _HERE)

import fsops_oracle as oracle  # noqa: E402
from callfs._native import fsops as native  # noqa: E402

IMPLEMENTATIONS = {"native": native, "oracle": oracle}
FUNCTIONS = ["rename_exchange", "rename_noreplace"]
DIRS = ["d0", "d1"]
NAMES = ["a", "b", "é", "a b", "\udcff"]  # the last is byte 0xFF, as os.fsdecode gives it


def examples(count):
    return settings(max_examples=count, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- trees ------------------------------------------------------------------------------------

ENTRIES = st.one_of(
    st.tuples(st.just("file"), st.binary(max_size=16)),
    st.tuples(st.just("dir"), st.none()),
    st.tuples(st.just("dir"), st.binary(max_size=8)),  # with one file inside
    st.tuples(st.just("link"), st.sampled_from(["a", "../d1/b", "nowhere", "é"])),
)
TREES = st.dictionaries(st.tuples(st.sampled_from(DIRS), st.sampled_from(NAMES)), ENTRIES,
                        max_size=6)
LOCATIONS = st.tuples(st.sampled_from(DIRS), st.sampled_from(NAMES))


def build(root, tree):
    for d in DIRS:
        os.mkdir(os.path.join(root, d))
    for (d, name), (kind, data) in tree.items():
        path = os.path.join(root, d, name)
        if kind == "file":
            with open(path, "wb") as f:
                f.write(data)
        elif kind == "dir":
            os.mkdir(path)
            if data is not None:
                with open(os.path.join(path, "inside"), "wb") as f:
                    f.write(data)
        else:
            os.symlink(data, path)


def snapshot(root):
    """Every name under `root` with what it is: file content, directory, or link target."""
    found = {}

    def walk(rel):
        for name in sorted(os.listdir(os.path.join(root, rel) if rel else root)):
            path = os.path.join(rel, name)
            full = os.path.join(root, path)
            st_ = os.lstat(full)
            if os.path.islink(full):
                found[path] = ("link", os.readlink(full))
            elif os.path.isdir(full):
                found[path] = ("dir",)
                walk(path)
            else:
                with open(full, "rb") as f:
                    found[path] = ("file", f.read(), st_.st_nlink)
    walk("")
    return found


def error(exc):
    return None if exc is None else (type(exc), getattr(exc, "errno", None))


def run(module, function, root, tree, src, dst):
    """(error, tree afterwards) of one call on a fresh copy of `tree` built in `root`."""
    os.mkdir(root)
    build(root, tree)
    fds = {d: os.open(os.path.join(root, d), os.O_RDONLY | os.O_DIRECTORY) for d in DIRS}
    caught = None
    try:
        getattr(module, function)(fds[src[0]], src[1], fds[dst[0]], dst[1])
    except (OSError, ValueError) as exc:
        caught = exc
    finally:
        for fd in fds.values():
            os.close(fd)
    return error(caught), snapshot(root)


def assert_agree(function, tree, src, dst):
    with tempfile.TemporaryDirectory() as top:
        got = run(native, function, os.path.join(top, "native"), tree, src, dst)
        expected = run(oracle, function, os.path.join(top, "oracle"), tree, src, dst)
    assert got == expected, (function, src, dst)
    return got


# --- properties -------------------------------------------------------------------------------

@examples(100)
@given(TREES, LOCATIONS, LOCATIONS)
@example({("d0", "a"): ("file", b"A"), ("d0", "b"): ("dir", b"B")}, ("d0", "a"), ("d0", "b"))
@example({("d0", "a"): ("file", b"A")}, ("d0", "a"), ("d0", "a"))
@example({("d0", "a"): ("link", "nowhere"), ("d1", "\udcff"): ("file", b"")},
         ("d0", "a"), ("d1", "\udcff"))
def test_exchange_agrees(tree, src, dst):
    err, after = assert_agree("rename_exchange", tree, src, dst)
    if src in tree and dst in tree:  # both exist: swapped (or one name for both: unchanged)
        assert err is None
    else:
        assert err == (FileNotFoundError, errno.ENOENT)


@examples(100)
@given(TREES, LOCATIONS, LOCATIONS)
@example({("d0", "a"): ("dir", b"x")}, ("d0", "a"), ("d1", "a"))
@example({("d0", "a"): ("file", b"x"), ("d1", "a"): ("dir", None)}, ("d0", "a"), ("d1", "a"))
def test_noreplace_agrees(tree, src, dst):
    err, after = assert_agree("rename_noreplace", tree, src, dst)
    if src not in tree:
        assert err == (FileNotFoundError, errno.ENOENT)
    elif dst in tree:
        assert err == (FileExistsError, errno.EEXIST)
    else:
        assert err is None


# --- examples ---------------------------------------------------------------------------------

def tree_of(tmp_path):
    return {str(p.relative_to(tmp_path)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(tmp_path.rglob("*"))}


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_exchange_swaps_file_and_directory(tmp_path, name):
    (tmp_path / "new").write_bytes(b"version 2")
    (tmp_path / "cur").mkdir()
    (tmp_path / "cur" / "x").write_bytes(b"inside")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        IMPLEMENTATIONS[name].rename_exchange(fd, "new", fd, "cur")
    finally:
        os.close(fd)
    assert tree_of(tmp_path) == {"cur": b"version 2", "new": None, "new/x": b"inside"}


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_paths_relative_to_the_working_directory_and_absolute(tmp_path, name, monkeypatch):
    module = IMPLEMENTATIONS[name]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a").write_bytes(b"A")
    (tmp_path / "b").write_bytes(b"B")
    module.rename_exchange(oracle.AT_FDCWD, "sub/a", oracle.AT_FDCWD, str(tmp_path / "b"))
    assert tree_of(tmp_path) == {"b": b"A", "sub": None, "sub/a": b"B"}
    module.rename_noreplace(oracle.AT_FDCWD, str(tmp_path / "sub" / "a"), oracle.AT_FDCWD, "c")
    assert tree_of(tmp_path) == {"b": b"A", "c": b"B", "sub": None}
    with pytest.raises(FileExistsError):
        module.rename_noreplace(oracle.AT_FDCWD, "c", oracle.AT_FDCWD, "b")
    with pytest.raises(FileNotFoundError):
        module.rename_exchange(oracle.AT_FDCWD, "c", oracle.AT_FDCWD, "sub/missing")
    assert tree_of(tmp_path) == {"b": b"A", "c": b"B", "sub": None}


@pytest.mark.parametrize("function", FUNCTIONS)
def test_hard_links_to_one_file(tmp_path, function):
    """Two names of one inode: the kernel has nothing to swap; no-replace still refuses."""
    results = []
    for module in IMPLEMENTATIONS.values():
        d = tmp_path / module.__name__
        d.mkdir()
        (d / "a").write_bytes(b"same")
        os.link(d / "a", d / "b")
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        try:
            getattr(module, function)(fd, "a", fd, "b")
            results.append(None)
        except OSError as exc:
            results.append(error(exc))
        finally:
            os.close(fd)
        assert sorted(os.listdir(d)) == ["a", "b"]
    assert results[0] == results[1]
    expected = None if function == "rename_exchange" else (FileExistsError, errno.EEXIST)
    assert results[0] == expected


def test_exchange_with_its_own_subdirectory_is_refused(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for src, dst in (("a", "a/b"), ("a/b", "a")):
            with pytest.raises(OSError) as caught:
                native.rename_exchange(fd, src, fd, dst)
            assert caught.value.errno == errno.EINVAL
    finally:
        os.close(fd)
    assert tree_of(tmp_path) == {"a": None, "a/b": None}


@pytest.mark.parametrize("function", FUNCTIONS)
def test_unencodable_names(tmp_path, function):
    (tmp_path / "a").write_bytes(b"A")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for module in IMPLEMENTATIONS.values():
            for args in ((fd, "\ud800", fd, "a"), (fd, "a", fd, "\udbff")):
                with pytest.raises(UnicodeEncodeError):
                    getattr(module, function)(*args)
    finally:
        os.close(fd)
    assert tree_of(tmp_path) == {"a": b"A"}


@pytest.mark.parametrize("function", FUNCTIONS)
def test_bad_directory_descriptor(tmp_path, function):
    (tmp_path / "a").write_bytes(b"A")
    (tmp_path / "b").write_bytes(b"B")
    file_fd = os.open(tmp_path / "a", os.O_RDONLY)
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for fds in ((1_000_000, dir_fd), (dir_fd, 1_000_000), (file_fd, dir_fd)):
            errors = []
            for module in IMPLEMENTATIONS.values():
                with pytest.raises(OSError) as caught:
                    getattr(module, function)(fds[0], "a", fds[1], "c")
                errors.append(error(caught.value))
            assert errors[0] == errors[1]
            assert errors[0][1] in (errno.EBADF, errno.ENOTDIR)
    finally:
        os.close(file_fd)
        os.close(dir_fd)
    assert tree_of(tmp_path) == {"a": b"A", "b": b"B"}


@pytest.mark.parametrize("function", FUNCTIONS)
@pytest.mark.parametrize("src, dst", [("a\x00junk", "c"), ("a", "c\x00junk"), ("a", "b\x00")])
def test_names_with_nul_are_refused(tmp_path, function, src, dst):
    """As os.rename: a C string would end at the NUL and rename another name."""
    (tmp_path / "a").write_bytes(b"A")
    (tmp_path / "b").write_bytes(b"B")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(ValueError):
            getattr(oracle, function)(fd, src, fd, dst)
        assert tree_of(tmp_path) == {"a": b"A", "b": b"B"}
        with pytest.raises(ValueError):
            getattr(native, function)(fd, src, fd, dst)
    finally:
        os.close(fd)
    assert tree_of(tmp_path) == {"a": b"A", "b": b"B"}


@pytest.mark.parametrize("function", FUNCTIONS)
def test_wrong_types(function):
    for module in IMPLEMENTATIONS.values():
        for args in ((oracle.AT_FDCWD, None, oracle.AT_FDCWD, "x"),
                     (oracle.AT_FDCWD, "x", oracle.AT_FDCWD, None)):
            with pytest.raises(TypeError):
                getattr(module, function)(*args)


def test_wrong_types_not_none():
    for function in FUNCTIONS:
        for module in IMPLEMENTATIONS.values():
            with pytest.raises(TypeError):
                getattr(module, function)("0", "a", oracle.AT_FDCWD, "b")
            with pytest.raises(TypeError):
                getattr(module, function)(oracle.AT_FDCWD, b"a", oracle.AT_FDCWD, 1.5)


# --- opening beneath a directory --------------------------------------------------------------

OPENERS = {"oracle": oracle.open_beneath, "walk": native.open_beneath_walk}
if native.openat2_available():
    OPENERS["openat2"] = native.open_beneath_openat2
SEGMENTS = ["a", "b", "é", "\udcff"]
FLAGS = [os.O_RDONLY, os.O_RDONLY | os.O_DIRECTORY, os.O_PATH, os.O_PATH | os.O_DIRECTORY,
         os.O_RDONLY | os.O_NONBLOCK, os.O_WRONLY | os.O_CREAT | os.O_EXCL,
         os.O_WRONLY | os.O_CREAT, os.O_RDWR | os.O_CREAT | os.O_TRUNC]
# What a name in the tree may be; links point inside, outside (relative and absolute: the
# absolute target is filled in per copy) and nowhere.
NODES = st.sampled_from([("file", b"in"), ("dir", None), ("link", "a"), ("link", "../outside"),
                         ("link", "../outside/secret"), ("link", "@outside"),
                         ("link", "nowhere"), ("link", "a/b")])
BENEATH_TREES = st.dictionaries(
    st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=3).map(tuple), NODES, max_size=8)
PATHS = st.lists(st.sampled_from(SEGMENTS), max_size=4).map("/".join)


def build_beneath(top, tree):
    """`top`/root holds the tree (entries whose parent is no directory are left out),
    `top`/outside a directory with a secret the opens must never reach."""
    root, outside = os.path.join(top, "root"), os.path.join(top, "outside")
    os.makedirs(root)
    os.makedirs(outside)
    with open(os.path.join(outside, "secret"), "wb") as f:
        f.write(b"secret")
    for parts, (kind, data) in sorted(tree.items(), key=lambda item: len(item[0])):
        parent = os.path.join(root, *parts[:-1])
        if not os.path.isdir(parent) or os.path.islink(parent):
            continue
        path = os.path.join(parent, parts[-1])
        if kind == "file":
            with open(path, "wb") as f:
                f.write(data)
        elif kind == "dir":
            os.mkdir(path)
        else:
            target = outside if data == "@outside" else data
            os.symlink(target, path)
    return root


def where(top, fd):
    """What `fd` opened: its type and the name of its inode under `top`."""
    info = os.fstat(fd)
    for directory, dirs, files in os.walk(top):
        for name in dirs + files + ["."]:
            full = os.path.join(directory, name)
            here = os.lstat(full)
            if (here.st_ino, here.st_dev) == (info.st_ino, info.st_dev):
                return stat.S_IFMT(info.st_mode), os.path.normpath(os.path.relpath(full, top))
    return stat.S_IFMT(info.st_mode), None


def beneath_snapshot(top):
    """`snapshot`, with absolute link targets told relative to `top` (each copy has its own)."""
    return {path: (("link", "@" + entry[1][len(top):]) if entry[0] == "link"
                   and entry[1].startswith(top) else entry)
            for path, entry in snapshot(top).items()}


def open_in_copy(top, opener, tree, path, flags):
    root = build_beneath(top, tree)
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    try:
        fd = opener(root_fd, path, flags, 0o640)
    except OSError as exc:
        return ("error", type(exc), exc.errno), beneath_snapshot(top)
    finally:
        os.close(root_fd)
    try:
        return where(top, fd), beneath_snapshot(top)
    finally:
        os.close(fd)


@examples(300)
@given(BENEATH_TREES, PATHS, st.sampled_from(FLAGS))
@example({("a",): ("link", "../outside")}, "a/secret", os.O_RDONLY)
@example({("a",): ("link", "@outside")}, "a/new", os.O_WRONLY | os.O_CREAT)
@example({("a",): ("link", "nowhere")}, "a", os.O_WRONLY | os.O_CREAT | os.O_EXCL)
@example({("a",): ("link", "nowhere")}, "a", os.O_WRONLY | os.O_CREAT)
@example({("a",): ("link", "../outside/secret")}, "a", os.O_PATH)
@example({("a",): ("link", "b"), ("b",): ("dir", None)}, "a", os.O_RDONLY | os.O_DIRECTORY)
@example({("a",): ("file", b"in")}, "a/b", os.O_RDONLY)
@example({}, "", os.O_RDONLY | os.O_DIRECTORY)
def test_open_beneath_agrees(tree, path, flags):
    results = {}
    with tempfile.TemporaryDirectory() as top:
        for name, opener in OPENERS.items():
            results[name] = open_in_copy(os.path.join(top, name), opener, tree, path, flags)
    expected = results.pop("oracle")
    for name, got in results.items():
        assert got == expected, (name, path, flags)
    opened, after = expected
    assert after["outside/secret"] == ("file", b"secret", 1)
    assert [p for p in after if p.startswith("outside")] == ["outside", "outside/secret"]
    if opened[0] != "error":
        assert opened[1] is not None and not opened[1].startswith("outside"), opened


def test_open_beneath_refuses_links_at_every_place(tmp_path):
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_bytes(b"secret")
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    (root / "d" / "f").write_bytes(b"f")
    os.symlink(tmp_path / "outside", root / "out")
    os.symlink("../outside/secret", root / "d" / "s")
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    try:
        for opener in OPENERS.values():
            for path, flags in (("out/secret", os.O_RDONLY), ("d/s", os.O_RDONLY),
                                ("out", os.O_RDONLY | os.O_DIRECTORY),
                                ("out/new", os.O_WRONLY | os.O_CREAT),
                                ("d/s", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
                with pytest.raises(OSError) as caught:
                    opener(fd, path, flags, 0o644)
                assert caught.value.errno == errno.ELOOP, (opener, path)
            got = opener(fd, "d/f", os.O_RDONLY)
            assert os.read(got, 10) == b"f"
            os.close(got)
    finally:
        os.close(fd)
    assert (tmp_path / "outside" / "secret").read_bytes() == b"secret"
    assert sorted(os.listdir(tmp_path / "outside")) == ["secret"]


@pytest.mark.parametrize("path", ["/a", "a/", "a//b", ".", "..", "a/./b", "a/../a", "../x",
                                  "a\x00b", "\x00"])
def test_open_beneath_takes_canonical_relative_paths_only(tmp_path, path):
    (tmp_path / "a").mkdir()
    fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    try:
        for opener in list(OPENERS.values()) + [native.open_beneath]:
            with pytest.raises(ValueError):
                opener(fd, path, os.O_RDONLY)
        for module in IMPLEMENTATIONS.values():
            with pytest.raises(ValueError):
                module.stat_beneath(fd, path)
    finally:
        os.close(fd)


def test_open_beneath_wrong_types(tmp_path):
    fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    try:
        for opener in list(OPENERS.values()) + [native.open_beneath, native.stat_beneath,
                                                oracle.stat_beneath]:
            for args in ((fd, None), (fd, b"a"), ("0", "a")):
                with pytest.raises(TypeError):
                    opener(*args, *([os.O_RDONLY] if opener not in (
                        native.stat_beneath, oracle.stat_beneath) else []))
    finally:
        os.close(fd)


def test_long_paths_walk_where_one_call_cannot(tmp_path):
    """A relative path over PATH_MAX (a deep tree): the kernel takes no such string in one
    call, the walk opens it all the same."""
    segments = ["d" * 200] * 25
    fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    current = os.dup(fd)
    try:
        for name in segments:
            os.mkdir(name, dir_fd=current)
            child = os.open(name, os.O_PATH | os.O_DIRECTORY, dir_fd=current)
            os.close(current)
            current = child
        os.close(os.open("f", os.O_WRONLY | os.O_CREAT, dir_fd=current))
        path = "/".join(segments + ["f"])
        assert len(path) > 4096
        for opener in (native.open_beneath, oracle.open_beneath, native.open_beneath_walk):
            os.close(opener(fd, path, os.O_RDONLY))
        assert stat.S_ISREG(native.stat_beneath(fd, path)[0])
    finally:
        os.close(current)
        os.close(fd)


@examples(150)
@given(BENEATH_TREES, PATHS)
def test_stat_beneath_agrees(tree, path):
    results = []
    with tempfile.TemporaryDirectory() as top:
        for copy, (module, mode) in enumerate(((oracle, True), (native, True), (native, False))):
            previous = native.use_openat2(mode)
            root = build_beneath(os.path.join(top, str(copy)), tree)  # names of one length
            fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
            try:
                mode_, ino, dev, nlink, size, _ = module.stat_beneath(fd, path)
            except OSError as exc:
                results.append((type(exc), exc.errno))
            else:
                # Found, so no link on the way: the path string names the same object.
                same = os.lstat(os.path.join(root, path))
                assert (same.st_ino, same.st_dev) == (ino, dev)
                results.append((mode_, nlink, size))
            finally:
                os.close(fd)
                native.use_openat2(previous)
    assert results[0] == results[1] == results[2], path


def test_openat2_choice():
    previous = native.use_openat2(False)
    try:
        assert native.use_openat2(True) is False
        assert native.use_openat2(previous) is native.openat2_available()
    finally:
        native.use_openat2(previous)
