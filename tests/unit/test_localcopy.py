"""Server-side copies: every way the host can exercise copies the bytes exactly, the chain
falls back when a way is unsupported, and a cancelled copy leaves the descriptors alone."""
import asyncio
import errno
import os
import shutil
import tempfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callfs.backends.localcopy import METHODS, CopySource, Unsupported, copy_bytes
from callfs.backends.localfs import ReadHandle


def _files(tmp_path, data: bytes):
    src = tmp_path / "src"
    src.write_bytes(data)
    s = os.open(src, os.O_RDONLY)
    d = os.open(tmp_path / "dst", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    return s, d


def _supported(method: str, tmp_path) -> bool:
    s, d = _files(tmp_path, b"probe")
    try:
        copy_bytes(s, d, 5, (method,))
        return True
    except OSError as exc:
        assert exc.errno == errno.EOPNOTSUPP
        return False
    finally:
        os.close(s)
        os.close(d)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("size", [0, 1, 4096, 65_537, 5 * 1024 * 1024 + 3])
def test_each_way_copies_exactly(tmp_path, method, size):
    if not _supported(method, tmp_path):
        pytest.skip(f"{method} is not supported on this filesystem")
    data = os.urandom(size)
    s, d = _files(tmp_path, data)
    try:
        assert copy_bytes(s, d, size, (method,)) == method
        assert os.pread(d, size + 1, 0) == data
        assert os.lseek(d, 0, os.SEEK_CUR) == size  # positioned at the end, like write()
    finally:
        os.close(s)
        os.close(d)


def test_the_chain_falls_back_past_an_unsupported_way(tmp_path):
    data = os.urandom(100_000)
    s, d = _files(tmp_path, data)
    try:
        used = copy_bytes(s, d, len(data))
        assert used in METHODS
        assert os.pread(d, len(data) + 1, 0) == data
        # With no way left, the copy fails rather than pretending.
        with pytest.raises(OSError):
            copy_bytes(s, d, len(data), ())
    finally:
        os.close(s)
        os.close(d)


def test_reflink_is_reported_unsupported_where_the_filesystem_lacks_it(tmp_path):
    from callfs.backends.localcopy import _reflink
    s, d = _files(tmp_path, b"abc")
    try:
        try:
            _reflink(s, d, 3, lambda: False)
        except Unsupported:
            assert os.fstat(d).st_size == 0
        else:
            assert os.pread(d, 4, 0) == b"abc"
    finally:
        os.close(s)
        os.close(d)


@settings(max_examples=25, deadline=None)
@given(st.binary(max_size=200_000))
def test_copy_source_fills_a_staged_file(tmp_path_factory, data):
    tmp = tmp_path_factory.mktemp("copy")
    s, d = _files(tmp, data)
    try:
        body = CopySource(ReadHandle(s, len(data)))
        assert body.expected == len(data)
        assert asyncio.run(body.transfer_to(d)) == len(data)
        assert asyncio.run(body.read()) == b""
        assert os.pread(d, len(data) + 1, 0) == data
    finally:
        os.close(s)
        os.close(d)


def test_a_cancelled_copy_is_finished_with_the_descriptors_before_it_returns(tmp_path):
    size = 256 * 1024 * 1024
    src = tmp_path / "big"
    with open(src, "wb") as fh:
        fh.truncate(size)  # sparse: cheap to make, still copied byte by byte
    s = os.open(src, os.O_RDONLY)
    d = os.open(tmp_path / "dst", os.O_RDWR | os.O_CREAT, 0o644)

    async def main():
        body = CopySource(ReadHandle(s, size), ("copy_file_range", "sendfile"))
        task = asyncio.create_task(body.transfer_to(d))
        await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The worker thread has stopped: the destination no longer grows.
        grown = os.fstat(d).st_size
        await asyncio.sleep(0.05)
        assert os.fstat(d).st_size == grown
    try:
        asyncio.run(main())
    finally:
        os.close(s)
        os.close(d)


REFLINK_DIR = os.environ.get("CALLFS_REFLINK_DIR", "")


@pytest.mark.skipif(not REFLINK_DIR, reason="no reflink-capable filesystem here (ci/reflink.sh)")
@pytest.mark.parametrize("size", [0, 1, 65_537, 8 * 1024 * 1024 + 1])
def test_reflink_where_the_filesystem_has_it(tmp_path, size):
    folder = tempfile.mkdtemp(dir=REFLINK_DIR)
    data = os.urandom(size)
    with open(os.path.join(folder, "src"), "wb") as fh:
        fh.write(data)
    s = os.open(os.path.join(folder, "src"), os.O_RDONLY)
    d = os.open(os.path.join(folder, "dst"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        assert copy_bytes(s, d, size) == "reflink"  # the first choice, when it works
        assert os.pread(d, size + 1, 0) == data
        assert os.lseek(d, 0, os.SEEK_CUR) == size
    finally:
        os.close(s)
        os.close(d)
        shutil.rmtree(folder)
