"""The local backend's staged writes when a writer's lock lapsed: a lapsed writer publishes
nothing, and taking back a write never removes a newer writer's bytes. And links planted in
the data directory: never followed, by openat2 or by the walk."""
import asyncio
import os
import time

import pytest

from callfs._native import fsops
from callfs.backends.localfs import TMP_PREFIX, LocalFSBackend
from callfs.domain import errors

run = asyncio.run

RESOLVERS = ["openat2", "walk"] if fsops.openat2_available() else ["walk"]


class Lapsed(Exception):
    pass


def lapsed():
    raise Lapsed()


@pytest.fixture(params=RESOLVERS)
def backend(tmp_path, request):
    previous = fsops.use_openat2(request.param == "openat2")
    store = LocalFSBackend(str(tmp_path / "root"), durable=False)
    asyncio.run(store.open())
    yield store
    fsops.use_openat2(previous)


def stage(backend, path: str, data: bytes, check=None):
    upload = backend.begin_write(path)
    run(upload.write(data))
    run(upload.commit(1, check))
    return upload


def content(backend, path: str) -> bytes:
    with open(backend.disk_path(path), "rb") as fh:
        return fh.read()


def staged(backend) -> list[str]:
    return [name for _, _, files in os.walk(backend.root) for name in files
            if name.startswith(TMP_PREFIX)]


def test_undo_puts_back_the_old_version(backend):
    run(stage(backend, "/f", b"old").finish())
    run(stage(backend, "/f", b"mine").undo())
    assert content(backend, "/f") == b"old"
    assert staged(backend) == []


def test_undo_of_a_new_file_removes_it(backend):
    run(stage(backend, "/new", b"mine").undo())
    assert not os.path.exists(backend.disk_path("/new"))
    assert staged(backend) == []


@pytest.mark.parametrize("existing", [True, False])
def test_undo_keeps_a_newer_writers_bytes(backend, existing):
    """A writer whose lock lapsed published; a newer writer published over it and recorded its
    version; the lapsed writer's record is refused and its undo must leave the newer bytes."""
    if existing:
        run(stage(backend, "/f", b"old").finish())
    lapsed_writer = stage(backend, "/f", b"lapsed")
    newer = stage(backend, "/f", b"newer")
    run(lapsed_writer.undo())
    run(newer.finish())
    assert content(backend, "/f") == b"newer"
    assert staged(backend) == []


def test_newer_writer_undone_after_a_lapsed_one_recorded(backend):
    """The other order: both published, the newer one's record fails (the version changed
    under it): the name gets back what the newer writer displaced, the recorded bytes."""
    run(stage(backend, "/f", b"old").finish())
    newer = stage(backend, "/f", b"newer")
    lapsed_writer = stage(backend, "/f", b"lapsed")
    run(lapsed_writer.finish())  # recorded
    run(newer.undo())
    assert content(backend, "/f") == b"lapsed"
    assert staged(backend) == []


@pytest.mark.parametrize("existing", [True, False])
def test_a_lapsed_lease_publishes_nothing(backend, existing):
    if existing:
        run(stage(backend, "/f", b"old").finish())
    with pytest.raises(Lapsed):
        stage(backend, "/f", b"lapsed", check=lapsed)
    assert os.path.exists(backend.disk_path("/f")) == existing
    if existing:
        assert content(backend, "/f") == b"old"
    assert staged(backend) == []


# -- deletions: the bytes are set aside inside the store's transaction ------------------------

def test_a_deletion_sets_the_bytes_aside_then_drops_them(backend):
    run(stage(backend, "/d/f", b"bytes").finish())
    removal = backend.begin_remove("/d/f")
    removal.publish()
    removal.publish()  # a transaction that runs again sets nothing aside twice
    assert not os.path.exists(backend.disk_path("/d/f"))
    assert len(staged(backend)) == 1
    run(removal.finish())
    assert staged(backend) == [] and os.listdir(backend.disk_path("/d")) == []


def test_a_deletion_that_did_not_commit_puts_the_bytes_back(backend):
    run(stage(backend, "/d/f", b"bytes").finish())
    removal = backend.begin_remove("/d/f")
    removal.publish()
    run(removal.undo())
    assert content(backend, "/d/f") == b"bytes"
    assert staged(backend) == []


def test_undoing_a_deletion_keeps_newer_bytes_at_the_name(backend):
    run(stage(backend, "/d/f", b"old").finish())
    removal = backend.begin_remove("/d/f")
    removal.publish()
    run(stage(backend, "/d/f", b"newer").finish())
    run(removal.undo())
    assert content(backend, "/d/f") == b"newer"
    assert staged(backend) == []


def test_a_deletion_without_bytes_or_of_a_directory_takes_nothing(backend):
    os.makedirs(backend.disk_path("/dir"))
    for path in ("/missing", "/gone/f", "/dir"):
        removal = backend.begin_remove(path)
        removal.publish()
        run(removal.finish())
    assert os.path.isdir(backend.disk_path("/dir")) and staged(backend) == []


def test_recovery_restores_bytes_set_aside_only_into_a_free_name(backend):
    run(stage(backend, "/d/f", b"bytes").finish())
    removal = backend.begin_remove("/d/f")
    removal.publish()
    aside = "/d/" + staged(backend)[0]
    run(stage(backend, "/d/f", b"newer").finish())
    assert not run(backend.restore_removed(aside, "/d/f"))
    os.unlink(backend.disk_path("/d/f"))
    assert run(backend.restore_removed(aside, "/d/f"))
    assert content(backend, "/d/f") == b"bytes"


def died(upload) -> None:
    """The writer's process is gone: its descriptor (and the flock on the staged file) too."""
    os.close(upload.fd)
    upload.fd = -1


def test_leftovers_while_serving_are_only_old_ones_or_older_than_the_server(backend):
    """A pass while serving skips a staged file younger than `min_age` unless it predates the
    server's start (a write in flight may hold its lock under a path a move changed since)."""
    upload = backend.begin_write("/d/f")
    run(upload.write(b"in flight"))
    died(upload)
    now = time.time_ns()
    assert [item.target for item in run(backend.leftovers(0.0))] == [None]
    assert run(backend.leftovers(60.0, started_ns=now - 10 ** 9)) == []
    found = run(backend.leftovers(60.0, started_ns=now + 10 ** 9))
    assert len(found) == 1 and found[0].parent == "/d" and found[0].written_for("f")
    assert not found[0].written_for("g")
    run(upload.abort())
    assert run(backend.leftovers(0.0)) == []


def test_a_live_writers_staged_file_is_never_a_leftover(backend):
    """Staging holds no path lock: the staged file's flock tells every recovery pass (of any
    process) that its writer lives, however old the file or the pass's cut-off."""
    run(stage(backend, "/d/f", b"old").finish())
    upload = backend.begin_write("/d/f")
    run(upload.write(b"slow"))
    far = time.time_ns() + 10 ** 12
    assert run(backend.leftovers(0.0, started_ns=far)) == []
    run(upload.commit(2))  # published (an exchange), not yet recorded
    assert [(i.target, i.same) for i in run(backend.leftovers(0.0, started_ns=far))] == \
        [("/d/f", False)]  # the old version: the path's lock guards it from here
    run(upload.finish())
    assert run(backend.leftovers(0.0, started_ns=far)) == [] and content(backend, "/d/f") == b"slow"


@pytest.mark.parametrize("remade", [True, False])
def test_a_staged_file_follows_its_path_when_a_directory_above_moves(backend, remade):
    """A directory above moved while the body streamed (taking the staged file along): the
    file is published at the path it was sent to, in the directory now there."""
    run(stage(backend, "/a/b/f", b"old").finish())
    upload = backend.begin_write("/a/b/f")
    run(upload.write(b"new"))
    os.rename(backend.disk_path("/a"), backend.disk_path("/moved"))
    if remade:
        os.makedirs(backend.disk_path("/a/b"))
    run(upload.seal())
    run(upload.commit(3, new=True))
    run(upload.finish())
    assert content(backend, "/a/b/f") == b"new"
    assert content(backend, "/moved/b/f") == b"old"
    assert staged(backend) == []


# -- links planted in the data directory: never followed --------------------------------------

@pytest.fixture
def outside(tmp_path):
    """A directory beside the root with a secret; `unchanged()` says it is as it was."""
    where = tmp_path / "outside"
    where.mkdir()
    (where / "secret").write_bytes(b"secret")
    (where / (TMP_PREFIX + "0123456789abcdef-0123456789abcdef")).write_bytes(b"not ours")
    before = tree(where)

    class Outside:
        path = where

        def unchanged(self):
            return tree(where) == before
    return Outside()


def tree(top):
    return {str(p.relative_to(top)): (p.read_bytes() if p.is_file() else None,
                                      p.lstat().st_mtime_ns, p.lstat().st_nlink)
            for p in sorted(top.rglob("*"))}


def test_a_file_replaced_by_a_link_is_neither_served_nor_written_through(backend, outside):
    run(stage(backend, "/d/f", b"mine").finish())
    os.unlink(backend.disk_path("/d/f"))
    os.symlink(outside.path / "secret", backend.disk_path("/d/f"))
    with pytest.raises(errors.StorageInconsistent):
        run(backend.open_read("/d/f"))
    with pytest.raises(errors.StorageInconsistent):
        backend.read_version("/d/f", 6, 0)
    assert backend.disk_version("/d/f") is None
    with pytest.raises(errors.StorageInconsistent):
        stage(backend, "/d/f", b"overwrite")
    with pytest.raises(errors.StorageInconsistent):
        backend.begin_move("/d/f", "/d/g", 1, False)
    assert os.path.islink(backend.disk_path("/d/f")) and staged(backend) == []
    removal = backend.begin_remove("/d/f")  # the link goes, as a name; its target stays
    removal.publish()
    run(removal.finish())
    assert os.listdir(backend.disk_path("/d")) == []
    assert outside.unchanged()


def test_nothing_below_a_directory_replaced_by_a_link(backend, outside):
    run(stage(backend, "/d/f", b"mine").finish())
    os.rename(backend.disk_path("/d"), backend.disk_path("/kept"))
    os.symlink(outside.path, backend.disk_path("/d"))
    with pytest.raises(errors.StorageInconsistent):
        run(backend.open_read("/d/secret"))
    assert backend.disk_version("/d/secret") is None
    for path in ("/d/new", "/d/sub/new", "/d/secret"):
        with pytest.raises(errors.StorageInconsistent):
            backend.begin_write(path)
    with pytest.raises(errors.StorageInconsistent):
        run(backend.make_directory("/d/sub"))
    with pytest.raises(errors.StorageInconsistent):
        backend.begin_move("/d/secret", "/moved", 1, False)
    with pytest.raises(OSError):
        run(backend.remove("/d/secret", False))
    with pytest.raises(OSError):
        run(backend.remove("/d", True))  # rmdir of a link: refused, never followed
    removal = backend.begin_remove("/d/secret")
    removal.publish()
    run(removal.finish())
    with pytest.raises(OSError):
        run(backend.remove_temporary("/d/" + TMP_PREFIX + "0123456789abcdef-0123456789abcdef"))
    assert outside.unchanged()
    assert content(backend, "/kept/f") == b"mine"


def test_a_dangling_link_is_never_created_through(backend, tmp_path):
    target = tmp_path / "created-through-the-link"
    os.symlink(target, backend.disk_path("/new"))
    with pytest.raises(errors.StorageInconsistent):
        stage(backend, "/new", b"bytes")
    with pytest.raises(errors.AlreadyExists):
        run(backend.make_directory("/new"))
    with pytest.raises(errors.StorageInconsistent):
        backend.begin_write("/new/below")
    assert not os.path.lexists(target)
    assert os.path.islink(backend.disk_path("/new")) and staged(backend) == []


def test_recovery_never_looks_through_a_link(backend, outside):
    run(stage(backend, "/d/f", b"mine").finish())
    os.symlink(outside.path, backend.disk_path("/d/out"))
    os.symlink(outside.path / "secret", backend.disk_path("/.callfs-move-0123456789abcdef"))
    assert run(backend.leftovers(0.0)) == []
    assert run(backend.move_intents()) == []
    assert outside.unchanged()


def test_a_move_renames_names_and_follows_no_link(backend, outside):
    run(stage(backend, "/a/f", b"mine").finish())
    os.symlink(outside.path, backend.disk_path("/a/out"))
    move = backend.begin_move("/a", "/b/c", 7, False)  # a directory holding a link
    move.publish()
    run(move.finish())
    assert os.path.islink(backend.disk_path("/b/c/out")) and content(backend, "/b/c/f") == b"mine"
    os.symlink(outside.path, backend.disk_path("/l"))
    move = backend.begin_move("/b/c/f", "/l/f", 8, False)
    with pytest.raises(errors.StorageInconsistent):
        move.publish()
    run(move.undo())  # as the engine does when the store's transaction fails
    assert content(backend, "/b/c/f") == b"mine"
    assert outside.unchanged() and run(backend.move_intents()) == []
