"""S3 backend: a file's bytes are the object `<s3_prefix><path without its leading />` of one
bucket, a directory an empty object whose key ends in `/` (API.md Appendix A).

botocore serialises, signs and parses every call; CallFS's own HTTP client sends it, on the
event loop (s3wire.py), so no S3 call blocks the loop and none needs a thread.

- **Reads** stream: a GET opens the object (its answer's headers give the size and ETag) and
  its body is read as the client takes it; another range, or a second read, is a ranged GET
  conditional on that ETag (a newer version is never mixed into an answer).
- **Writes** stage with no lock held: a body of up to one part waits in memory and goes as one
  PUT when it publishes; a larger one becomes a multipart upload whose parts are sent while
  the body still arrives, a bounded number at once. Publishing (under the path's lock) is the
  PUT, or the CompleteMultipartUpload that makes every part visible at once: readers see the
  old object or the new one whole. An abandoned write aborts its multipart upload.
- **Copies** within the bucket never move bytes through CallFS: CopyObject, or UploadPartCopy
  for objects larger than one CopyObject takes. A copy to or from another backend streams.
- **Moves** copy each object to its new key before the metadata commits, and delete the old
  keys after it: a failure leaves the old names, a crash at worst a copy the metadata does not
  know (metadata is the truth: listings and stat never list the bucket).
- **Errors**: throttling (503 SlowDown) and transient failures are retried with exponential
  backoff and full jitter; what remains becomes the API's own error. No S3 response text
  reaches a client; the log has it.

Multipart uploads left behind by a process that died are found by recovery: each one has an
intent object under `<s3_prefix>.callfs-uploads/<instance>/<run>.<pid>/`; a writer of an
earlier run of the instance, or of this run but no longer running, is dead, and its uploads
are aborted.
"""
import asyncio
import logging
import os
import secrets
import time
from dataclasses import dataclass

from callfs.backends.base import Capability
from callfs.backends.s3wire import S3Client
from callfs.backends.streamed import StreamedReadHandle
from callfs.domain import errors

log = logging.getLogger("callfs.s3")

PARTS_IN_FLIGHT = 3  # parts of one upload sent at once
MIN_PART = 5 * 1024 ** 2  # S3's smallest part (all but the last)
MAX_PART = 5 * 1024 ** 3
MAX_COPY_OBJECT = 5 * 1024 ** 3  # the largest object one CopyObject takes
COPY_PART = 1024 ** 3  # bytes per UploadPartCopy beyond that
INTENTS = ".callfs-uploads/"
STALE_UPLOAD = 24 * 3600.0  # a multipart upload without an intent is abandoned after this
_DELETE_BATCH = 1000  # keys per DeleteObjects


@dataclass(frozen=True)
class S3Settings:
    """The `backend.s3_*` keys (CONFIG.md §5.5) this backend is built from."""

    bucket: str
    region: str = "us-east-1"
    endpoint: str = ""
    access_key: str = ""
    secret_key: str = ""
    prefix: str = ""
    server_side_encryption: str = "AES256"
    kms_key_id: str = ""
    acl: str = "private"
    part_size: int = 16 * 1024 ** 2
    connect_timeout: float = 3.0
    read_timeout: float = 30.0
    attempts: int = 4  # tries of a call that fails transiently: the first and three more

    @classmethod
    def from_config(cls, backend) -> "S3Settings":
        return cls(bucket=backend.s3_bucket_name, region=backend.s3_region or "us-east-1",
                   endpoint=backend.s3_endpoint, access_key=backend.s3_access_key,
                   secret_key=backend.s3_secret_key, prefix=backend.s3_prefix,
                   server_side_encryption=backend.s3_server_side_encryption,
                   kms_key_id=backend.s3_kms_key_id, acl=backend.s3_acl,
                   part_size=int(backend.s3_part_size))

    def write_arguments(self) -> dict:
        """What every PUT, multipart creation and copy carries: encryption and the ACL."""
        extra = {}
        if self.server_side_encryption:
            extra["ServerSideEncryption"] = self.server_side_encryption
            if self.server_side_encryption == "aws:kms" and self.kms_key_id:
                extra["SSEKMSKeyId"] = self.kms_key_id
        if self.acl:
            extra["ACL"] = self.acl
        return extra


class S3ReadHandle(StreamedReadHandle):
    """An object of a known size and ETag; its bytes are streamed (see streamed.py)."""

    def __init__(self, backend: "S3Backend", key: str, size: int, etag: str, body=None):
        super().__init__(size, etag, body)
        self.backend = backend
        self.key = key

    @property
    def what(self) -> str:
        return f"S3 object {self.key}"

    async def _ranged(self, offset: int, length: int):
        answer = await self.backend.s3.call("get_object", Bucket=self.backend.bucket,
                                            Key=self.key,
                                            Range=f"bytes={offset}-{offset + length - 1}",
                                            IfMatch=self.etag)
        return answer["Body"]


class S3CopySource:
    """An open object as the body of a write. An upload to the same bucket copies it on the
    server (it takes the source whole and reads nothing); any other backend reads it."""

    def __init__(self, handle: S3ReadHandle):
        self.handle = handle
        self.expected = handle.size
        self.taken = False  # a server-side copy took it: nothing is left to read
        self._pieces = None

    async def read(self) -> bytes:
        if self.taken:
            return b""
        if self._pieces is None:
            self._pieces = self.handle.chunks(0, self.handle.size)
        try:
            return await self._pieces.__anext__()
        except StopAsyncIteration:
            return b""

    async def transfer_to(self, fd: int) -> int:
        written = 0
        async for data in self.handle.chunks(0, self.handle.size):
            view = memoryview(data)
            while view:
                count = os.write(fd, view)
                view = view[count:]
                written += count
        self.taken = True
        return written


class S3Upload:
    """One staged write (see the module's docstring). `size` counts the body's bytes."""

    def __init__(self, backend: "S3Backend", path: str):
        self.backend = backend
        self.key = backend.key(path)
        self.size = 0
        self._buffer = bytearray()
        self._upload_id = None
        self._intent = None
        self._parts: list[dict] = []
        self._sending: set[asyncio.Task] = set()
        self._copy: S3CopySource | None = None
        self._published = False
        self._etag = None
        self._new = False
        self._ended = False

    async def write(self, chunk) -> None:
        self._buffer += chunk
        self.size += len(chunk)
        part = self.backend.part_size
        while len(self._buffer) >= part:
            # The buffer itself goes as the part; only what is beyond it is copied out.
            data, self._buffer = self._buffer, self._buffer[part:]
            del data[part:]
            await self._send_part(data)

    async def fill(self, body) -> None:
        """A copy of an object of this bucket is made on the server when it publishes; any
        other body is read by the engine's loop (`write`)."""
        if isinstance(body, S3CopySource) and body.handle.backend.bucket == self.backend.bucket:
            body.taken = True
            self._copy = body
            self.size = body.expected

    async def _send_part(self, data: bytes) -> None:
        s3, bucket = self.backend.s3, self.backend.bucket
        if self._upload_id is None:
            answer = await s3.call("create_multipart_upload", Bucket=bucket, Key=self.key,
                                   **self.backend.settings.write_arguments())
            self._upload_id = answer["UploadId"]
            self._intent = await self.backend.record_upload(self.key, self._upload_id)
        number = len(self._parts) + 1
        part = {"PartNumber": number}
        self._parts.append(part)

        async def send():
            answer = await s3.call("upload_part", Bucket=bucket, Key=self.key,
                                   UploadId=self._upload_id, PartNumber=number, Body=data)
            part["ETag"] = answer["ETag"]

        task = asyncio.ensure_future(send())
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)
        if len(self._sending) >= PARTS_IN_FLIGHT:
            done, _ = await asyncio.wait(set(self._sending),
                                         return_when=asyncio.FIRST_COMPLETED)
            for finished in done:
                finished.result()  # a failed part fails the write

    async def seal(self) -> None:
        """The body is whole: the last part goes, and every part is stored."""
        if self._upload_id is not None and (self._buffer or not self._parts):
            data = bytes(self._buffer)
            self._buffer.clear()
            await self._send_part(data)
        if self._sending:
            for task in list(self._sending):
                await task

    async def commit(self, mtime_ns: int | None = None, check=None, new: bool = False) -> None:
        """Publish under the path's lock: the PUT, the copy or the completion; `check()` just
        before, to refuse when the writer's lock lapsed."""
        self._new = new
        if check is not None:
            check()
        backend, s3 = self.backend, self.backend.s3
        extra = backend.settings.write_arguments()
        if self._copy is not None:
            answer = await backend.copy_object(self._copy.handle.key, self.key,
                                               self._copy.handle.size, self._copy.handle.etag)
            self._etag = answer
        elif self._upload_id is not None:
            answer = await s3.call(
                "complete_multipart_upload", Bucket=backend.bucket, Key=self.key,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": [{"ETag": p["ETag"], "PartNumber": p["PartNumber"]}
                                           for p in self._parts]})
            self._etag = answer.get("ETag")
            self._upload_id = None
            await backend.drop_intent(self._intent)
        else:
            answer = await s3.call("put_object", Bucket=backend.bucket, Key=self.key,
                                   Body=bytes(self._buffer), **extra)
            self._etag = answer.get("ETag")
        self._buffer = bytearray()
        self._published = True

    async def finish(self) -> None:
        self._ended = True

    async def undo(self) -> None:
        """The metadata could not record the write. A new file's object goes, unless a newer
        writer has published over it since; an object it replaced cannot come back (S3 keeps
        no old version here): the record then describes bytes that are gone, and says so."""
        try:
            if self._published and self._new:
                try:
                    head = await self.backend.s3.call("head_object", Bucket=self.backend.bucket,
                                                      Key=self.key)
                except errors.NotFound:
                    return
                if head.get("ETag") == self._etag:
                    await self.backend.s3.call("delete_object", Bucket=self.backend.bucket,
                                               Key=self.key)
            elif self._published:
                log.warning("a replaced S3 object could not be put back",
                            extra={"path": "/" + self.key[len(self.backend.prefix):]})
        finally:
            await self.abort()

    async def abort(self) -> None:
        """Drop an unpublished write: its parts stop and its multipart upload is aborted (a
        failure is left to recovery, which finds the intent). Never raises."""
        self._ended = True
        self._buffer = bytearray()
        for task in list(self._sending):
            task.cancel()
        for task in list(self._sending):
            try:
                await task
            except BaseException:
                pass
        if self._upload_id is not None:
            upload_id, self._upload_id = self._upload_id, None
            try:
                await self.backend.abort_upload(self.key, upload_id, self._intent)
            except Exception as exc:
                log.warning("a multipart upload could not be aborted; recovery will",
                            extra={"error": str(exc)})


class S3Removal:
    """Deleting a file's object with its metadata: nothing happens inside the transaction
    (an object has no second name to set it aside under); once the deletion commits the
    object goes."""

    def __init__(self, backend: "S3Backend", path: str):
        self.backend = backend
        self.key = backend.key(path)

    def publish(self) -> None:
        pass

    async def finish(self) -> None:
        try:
            await self.backend.s3.call("delete_object", Bucket=self.backend.bucket, Key=self.key)
        except errors.CallFSError as exc:
            # The entry is gone; the object is only untidy (metadata is the truth).
            log.warning("the object of a deleted file remains", extra={"error": str(exc)})

    async def undo(self) -> None:
        pass


class S3Move:
    """Moving an entry (a directory with every object below it) to a new key: each object is
    copied to its new key in `prepare`, before the metadata commits; the old keys go at
    `finish`; `undo` removes the copies."""

    def __init__(self, backend: "S3Backend", src: str, dst: str, replace: bool):
        self.backend = backend
        self.src = backend.key(src)
        self.dst = backend.key(dst)
        self.replace = replace
        self.copied: list[tuple[str, str]] = []  # (old key, new key)

    async def prepare(self) -> None:
        backend = self.backend
        objects = await backend.objects_at(self.src)
        if not objects:
            raise errors.BytesMissing(f"/{self.src}: no object in the bucket to move")
        semaphore = asyncio.Semaphore(PARTS_IN_FLIGHT * 2)

        async def copy(key: str, size: int, etag: str) -> None:
            target = self.dst + key[len(self.src):]
            async with semaphore:
                await backend.copy_object(key, target, size, etag)
            self.copied.append((key, target))

        await asyncio.gather(*(copy(key, size, etag) for key, size, etag in objects))

    def publish(self) -> None:
        pass

    async def finish(self) -> None:
        await self.backend.delete_keys([old for old, _ in self.copied])

    async def undo(self) -> None:
        await self.backend.delete_keys([new for _, new in self.copied])


class S3Leftover:
    """A multipart upload a dead process left: `tmp` names it (key and upload id)."""

    __slots__ = ("tmp", "target", "same", "parent", "key", "upload_id", "intent")

    def __init__(self, key: str, upload_id: str, intent: str | None):
        self.tmp = f"s3-upload:{upload_id}"
        self.target = None
        self.same = False
        self.parent = "/"
        self.key = key
        self.upload_id = upload_id
        self.intent = intent

    def written_for(self, name: str) -> bool:
        return False  # an upload that never completed holds no entry's bytes


class S3Backend:
    name = "s3"
    capabilities = Capability.RANGED_READ | Capability.SERVER_COPY

    def __init__(self, settings: S3Settings, *, instance_id: str = "", run_id: str = ""):
        self.settings = settings
        self.bucket = settings.bucket
        self.prefix = settings.prefix
        self.part_size = min(max(settings.part_size, MIN_PART), MAX_PART)
        self.instance_id = instance_id or "callfs"
        self.run_id = run_id or f"{time.time_ns():x}"
        self.s3 = S3Client(settings)
        if not self.s3.tls:
            # A store over plain HTTP: a download's socket can be spliced to the client's.
            self.capabilities = self.capabilities | Capability.SOCKET_BODY
        self._leftovers: dict[str, S3Leftover] = {}
        # This process's multipart uploads whose abort failed (the store was away): its
        # recovery passes abort them (no other process may: their writer is alive).
        self._owed: dict[str, tuple[str, str | None]] = {}

    def key(self, path: str) -> str:
        return self.prefix + path[1:]

    async def open(self) -> None:
        """The bucket must answer (a HEAD-bucket check); ServiceUnavailable or InternalError
        says why not."""
        try:
            await self.s3.call("head_bucket", Bucket=self.bucket)
        except errors.NotFound:
            raise errors.InternalError(f"the bucket {self.bucket} does not exist") from None

    async def close(self) -> None:
        self.s3.close()

    # -- reads ---------------------------------------------------------------------------------

    async def open_read(self, path: str, *, content: bool = True) -> S3ReadHandle:
        """With `content`, one GET: the answer's headers give the size and ETag, and its body,
        read as the client takes it, is that one version whatever is written meanwhile.
        Without (a HEAD), a HEAD."""
        key = self.key(path)
        if not content:
            head = await self.s3.call("head_object", Bucket=self.bucket, Key=key)
            return S3ReadHandle(self, key, int(head["ContentLength"]), head["ETag"])
        answer = await self.s3.call("get_object", Bucket=self.bucket, Key=key)
        return S3ReadHandle(self, key, int(answer["ContentLength"]), answer["ETag"],
                            answer["Body"])

    async def version(self, path: str) -> tuple[int, None] | None:
        try:
            head = await self.s3.call("head_object", Bucket=self.bucket, Key=self.key(path))
        except errors.NotFound:
            return None
        return int(head["ContentLength"]), None

    def copy_source(self, handle: S3ReadHandle) -> S3CopySource:
        return S3CopySource(handle)

    # -- writes --------------------------------------------------------------------------------

    def begin_write(self, path: str) -> S3Upload:
        return S3Upload(self, path)

    def begin_remove(self, path: str) -> S3Removal:
        return S3Removal(self, path)

    def begin_move(self, src: str, dst: str, entry_id: int, replace: bool) -> S3Move:
        return S3Move(self, src, dst, replace)

    async def make_directory(self, path: str) -> None:
        if path == "/":
            return
        await self.s3.call("put_object", Bucket=self.bucket, Key=self.key(path) + "/", Body=b"",
                           **self.settings.write_arguments())

    async def remove(self, path: str, is_dir: bool) -> bool:
        key = self.key(path) + ("/" if is_dir else "")
        try:
            await self.s3.call("head_object", Bucket=self.bucket, Key=key)
        except errors.NotFound:
            return False
        await self.s3.call("delete_object", Bucket=self.bucket, Key=key)
        return True

    async def copy_object(self, source: str, target: str, size: int, etag: str) -> str | None:
        """A server-side copy of the object `source` (of that size and ETag) to `target`;
        the new object's ETag. WriteConflict when the source changed meanwhile."""
        extra = self.settings.write_arguments()
        origin = {"Bucket": self.bucket, "Key": source}
        if size <= MAX_COPY_OBJECT:
            answer = await self.s3.call("copy_object", Bucket=self.bucket, Key=target,
                                        CopySource=origin, CopySourceIfMatch=etag, **extra)
            return answer.get("CopyObjectResult", {}).get("ETag")
        created = await self.s3.call("create_multipart_upload", Bucket=self.bucket, Key=target,
                                     **extra)
        upload_id = created["UploadId"]
        intent = await self.record_upload(target, upload_id)
        try:
            parts = []
            for number, start in enumerate(range(0, size, COPY_PART), 1):
                end = min(start + COPY_PART, size) - 1
                answer = await self.s3.call(
                    "upload_part_copy", Bucket=self.bucket, Key=target, UploadId=upload_id,
                    PartNumber=number, CopySource=origin, CopySourceIfMatch=etag,
                    CopySourceRange=f"bytes={start}-{end}")
                parts.append({"PartNumber": number, "ETag": answer["CopyPartResult"]["ETag"]})
            done = await self.s3.call("complete_multipart_upload", Bucket=self.bucket,
                                      Key=target, UploadId=upload_id,
                                      MultipartUpload={"Parts": parts})
        except BaseException:
            await self.abort_upload(target, upload_id, intent)
            raise
        await self.drop_intent(intent)
        return done.get("ETag")

    async def objects_at(self, key: str) -> list[tuple[str, int, str]]:
        """(key, size, ETag) of the object `key` and of every object below `key/`. This lists
        the bucket: only a move of bytes does, never a lookup."""
        found = []
        token = None
        while True:
            arguments = {"Bucket": self.bucket, "Prefix": key}
            if token:
                arguments["ContinuationToken"] = token
            page = await self.s3.call("list_objects_v2", **arguments)
            for item in page.get("Contents", ()):
                name = item["Key"]
                if name == key or name.startswith(key + "/"):
                    found.append((name, int(item["Size"]), item["ETag"]))
            if not page.get("IsTruncated"):
                return found
            token = page.get("NextContinuationToken")

    async def delete_keys(self, keys: list[str]) -> None:
        for start in range(0, len(keys), _DELETE_BATCH):
            batch = keys[start:start + _DELETE_BATCH]
            await self.s3.call("delete_objects", Bucket=self.bucket,
                               Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True})

    # -- multipart uploads in flight, and recovery -------------------------------------------

    def _intent_prefix(self) -> str:
        return f"{self.prefix}{INTENTS}{self.instance_id}/"

    async def record_upload(self, key: str, upload_id: str) -> str:
        """Say, in the bucket, that this run of this instance has the upload in flight: an
        empty object whose key holds the run and the upload's id (hex-encoded)."""
        intent = (f"{self._intent_prefix()}{self.run_id}.{os.getpid()}/"
                  f"{upload_id.encode().hex()}")
        await self.s3.call("put_object", Bucket=self.bucket, Key=intent, Body=b"",
                           **self.settings.write_arguments())
        return intent

    async def drop_intent(self, intent: str | None) -> None:
        if intent is None:
            return
        try:
            await self.s3.call("delete_object", Bucket=self.bucket, Key=intent)
        except errors.CallFSError as exc:
            log.warning("an upload intent remains", extra={"error": str(exc)})

    async def abort_upload(self, key: str, upload_id: str, intent: str | None) -> None:
        """Abort a multipart upload and drop its intent; when the store fails, the upload is
        owed, and this process's next recovery pass aborts it."""
        try:
            try:
                await self.s3.call("abort_multipart_upload", Bucket=self.bucket, Key=key,
                                   UploadId=upload_id)
            except errors.NotFound:
                pass  # gone already
            await self.drop_intent(intent)
        except BaseException:
            self._owed[upload_id] = (key, intent)
            raise
        self._owed.pop(upload_id, None)

    async def leftovers(self, min_age: float = 0.0, started_ns: int = 0) -> list[S3Leftover]:
        """Multipart uploads no live writer has: those whose intent names a dead writer of
        this instance (whatever `min_age`: a process that ended writes no more), and any
        without an intent once STALE_UPLOAD old (killed between starting and saying so)."""
        accounted: dict[str, str] = {}  # upload id -> its intent, of every instance
        dead: set[str] = set()  # upload ids of this instance's earlier runs
        everyone = f"{self.prefix}{INTENTS}"
        mine = self._intent_prefix()
        for intent in await self._keys(everyone):
            try:
                upload_id = bytes.fromhex(intent.rsplit("/", 1)[1]).decode()
            except (ValueError, UnicodeDecodeError):
                continue  # not an intent (a file of a user's named like one)
            accounted[upload_id] = intent
            writer = intent[len(mine):].split("/")
            if intent.startswith(mine) and len(writer) == 2 and not self._alive(writer[0]):
                dead.add(upload_id)
        cutoff = time.time() - STALE_UPLOAD
        leftovers = []
        for key, upload_id, initiated in await self._uploads():
            if upload_id in dead:
                leftovers.append(S3Leftover(key, upload_id, accounted[upload_id]))
            elif upload_id not in accounted and initiated < cutoff:
                leftovers.append(S3Leftover(key, upload_id, None))
            elif upload_id in self._owed:
                leftovers.append(S3Leftover(key, upload_id, self._owed[upload_id][1]))
        for upload_id, (_, intent) in list(self._owed.items()):
            if upload_id not in {item.upload_id for item in leftovers}:
                del self._owed[upload_id]  # gone meanwhile
                await self.drop_intent(intent)
        for upload_id in dead - {item.upload_id for item in leftovers}:
            await self.drop_intent(accounted[upload_id])  # its upload completed or went
        self._leftovers = {item.tmp: item for item in leftovers}
        return leftovers

    def _alive(self, writer: str) -> bool:
        """Whether the writer `<run>.<pid>` of this instance may still run: a process of this
        run (this host's, as an instance runs on one) that exists."""
        run, _, pid = writer.rpartition(".")
        if run != self.run_id or not pid.isdigit():
            return False
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    async def _keys(self, prefix: str) -> list[str]:
        keys, token = [], None
        while True:
            arguments = {"Bucket": self.bucket, "Prefix": prefix}
            if token:
                arguments["ContinuationToken"] = token
            page = await self.s3.call("list_objects_v2", **arguments)
            keys.extend(item["Key"] for item in page.get("Contents", ()))
            if not page.get("IsTruncated"):
                return keys
            token = page.get("NextContinuationToken")

    async def _uploads(self) -> list[tuple[str, str, float]]:
        uploads, key_marker, id_marker = [], None, None
        while True:
            arguments = {"Bucket": self.bucket, "Prefix": self.prefix}
            if key_marker:
                arguments.update(KeyMarker=key_marker, UploadIdMarker=id_marker)
            page = await self.s3.call("list_multipart_uploads", **arguments)
            for item in page.get("Uploads", ()):
                uploads.append((item["Key"], item["UploadId"], item["Initiated"].timestamp()))
            if not page.get("IsTruncated"):
                return uploads
            key_marker = page.get("NextKeyMarker")
            id_marker = page.get("NextUploadIdMarker")

    async def remove_temporary(self, path: str) -> None:
        item = self._leftovers.pop(path, None)
        if item is not None:
            await self.abort_upload(item.key, item.upload_id, item.intent)

    async def restore_removed(self, tmp: str, path: str) -> bool:
        return False  # a deletion sets nothing aside on S3

    async def move_intents(self) -> list[tuple[str, dict]]:
        return []  # a move's copies are made before its commit: a crash leaves no half move

    async def drop_move_intent(self, name: str) -> None:
        pass

    async def recover_move(self, name: str, record: dict, committed: bool) -> None:
        pass
