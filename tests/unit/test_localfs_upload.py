"""The local backend's staged writes when a writer's lock lapsed: a lapsed writer publishes
nothing, and taking back a write never removes a newer writer's bytes."""
import asyncio
import os

import pytest

from callfs.backends.localfs import TMP_PREFIX, LocalFSBackend


class Lapsed(Exception):
    pass


def lapsed():
    raise Lapsed()


@pytest.fixture
def backend(tmp_path):
    store = LocalFSBackend(str(tmp_path / "root"), durable=False)
    asyncio.run(store.open())
    return store


def stage(backend, path: str, data: bytes, check=None):
    upload = backend.begin_write(path)
    upload.write(data)
    asyncio.run(upload.commit(1, check))
    return upload


def content(backend, path: str) -> bytes:
    with open(backend.disk_path(path), "rb") as fh:
        return fh.read()


def staged(backend) -> list[str]:
    return [name for _, _, files in os.walk(backend.root) for name in files
            if name.startswith(TMP_PREFIX)]


def test_undo_puts_back_the_old_version(backend):
    stage(backend, "/f", b"old").finish()
    stage(backend, "/f", b"mine").undo()
    assert content(backend, "/f") == b"old"
    assert staged(backend) == []


def test_undo_of_a_new_file_removes_it(backend):
    stage(backend, "/new", b"mine").undo()
    assert not os.path.exists(backend.disk_path("/new"))
    assert staged(backend) == []


@pytest.mark.parametrize("existing", [True, False])
def test_undo_keeps_a_newer_writers_bytes(backend, existing):
    """A writer whose lock lapsed published; a newer writer published over it and recorded its
    version; the lapsed writer's record is refused and its undo must leave the newer bytes."""
    if existing:
        stage(backend, "/f", b"old").finish()
    lapsed_writer = stage(backend, "/f", b"lapsed")
    newer = stage(backend, "/f", b"newer")
    lapsed_writer.undo()
    newer.finish()
    assert content(backend, "/f") == b"newer"
    assert staged(backend) == []


def test_newer_writer_undone_after_a_lapsed_one_recorded(backend):
    """The other order: both published, the newer one's record fails (the version changed
    under it): the name gets back what the newer writer displaced, the recorded bytes."""
    stage(backend, "/f", b"old").finish()
    newer = stage(backend, "/f", b"newer")
    lapsed_writer = stage(backend, "/f", b"lapsed")
    lapsed_writer.finish()  # recorded
    newer.undo()
    assert content(backend, "/f") == b"lapsed"
    assert staged(backend) == []


@pytest.mark.parametrize("existing", [True, False])
def test_a_lapsed_lease_publishes_nothing(backend, existing):
    if existing:
        stage(backend, "/f", b"old").finish()
    with pytest.raises(Lapsed):
        stage(backend, "/f", b"lapsed", check=lapsed)
    assert os.path.exists(backend.disk_path("/f")) == existing
    if existing:
        assert content(backend, "/f") == b"old"
    assert staged(backend) == []
