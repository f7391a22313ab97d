"""Link redemptions on SQLite are committed in groups: each one of a group is decided as if
alone (distinct tokens all redeemed, one token redeemed once), and a group whose transaction
fails fails every member, never some silently."""
import asyncio
import time

import pytest

from callfs._native.token import LinkSigner
from callfs.domain import errors
from callfs.metadata.base import LinkOutcome
from callfs.metadata.sqlite import SQLiteStore


def run(coro):
    return asyncio.run(coro)


@pytest.mark.parametrize("durable", [False, True])
def test_a_group_decides_each_redemption_as_if_alone(tmp_path, durable):
    async def main():
        store = SQLiteStore(str(tmp_path / "m.db"), durable=durable)
        await store.open()
        try:
            signer = LinkSigner("link-secret-0123456789")
            now = time.time_ns()
            tokens = [signer.issue(f"/f{i}") for i in range(40)]
            for i, token in enumerate(tokens):
                await store.create_link(token, f"/f{i}", token.partition(".")[2],
                                        now + 10 ** 12, now)
            twice = tokens[:5] * 2  # each of these asked for twice in the same group
            outcomes = await asyncio.gather(*[
                store.consume_link(token, now, "127.0.0.1", lambda path: True)
                for token in tokens[5:] + twice])
            distinct, repeated = outcomes[:35], outcomes[35:]
            assert [o for o, _ in distinct] == [LinkOutcome.CONSUMED] * 35
            assert [p for _, p in distinct] == [f"/f{i}" for i in range(5, 40)]
            assert sorted(o.name for o, _ in repeated) == ["CONSUMED"] * 5 + ["USED"] * 5
            again = await store.consume_link(tokens[7], now, None, lambda path: True)
            assert again == (LinkOutcome.USED, "/f7")
            unknown = await store.consume_link("x" * 69, now, None, lambda path: True)
            assert unknown[0] is LinkOutcome.UNKNOWN
        finally:
            await store.close()

    run(main())


def test_a_failed_group_fails_every_member(tmp_path):
    async def main():
        store = SQLiteStore(str(tmp_path / "m.db"), durable=False)
        await store.open()
        signer = LinkSigner("link-secret-0123456789")
        now = time.time_ns()
        token = signer.issue("/f")
        await store.create_link(token, "/f", token.partition(".")[2], now + 10 ** 12, now)

        def broken(path):
            raise errors.InternalError("the check failed")

        try:
            results = await asyncio.gather(
                store.consume_link(token, now, None, broken),
                store.consume_link(token, now, None, lambda path: True),
                return_exceptions=True)
            assert all(isinstance(r, errors.CallFSError) for r in results), results
            # Nothing of the failed group was committed: the link is still there to redeem.
            assert (await store.consume_link(token, now, None, lambda p: True))[0] is \
                LinkOutcome.CONSUMED
        finally:
            await store.close()

    run(main())
