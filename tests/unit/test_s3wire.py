"""The S3 wire (callfs/backends/s3wire.py) without a store: where each request goes (path
style to an endpoint, virtual-hosted style on AWS, path style for a bucket with dots), that its
signature is the one botocore's own client computes for the same request and clock, and how S3
errors become the API's."""
import datetime

import pytest
from botocore.exceptions import ClientError

from callfs.backends import s3wire
from callfs.backends.s3 import S3Settings
from callfs.backends.s3wire import S3Client, _botocore, translate
from callfs.domain import errors
from callfs.http.client import PeerError


def serialized(operation: str, **arguments) -> dict:
    model, names, serializer, _ = _botocore()
    op = model.operation_model(names[operation])
    return serializer.serialize_to_request(s3wire._prepared(op.name, arguments), op)


def test_an_endpoint_takes_path_style_requests():
    client = S3Client(S3Settings(bucket="data", endpoint="http://127.0.0.1:9000"))
    assert (client.tls, client.host, client.port) == (False, "127.0.0.1", 9000)
    request = serialized("get_object", Bucket="data", Key="a dir/ü.txt")
    assert client._target(request) == ("/data/a%20dir/%C3%BC.txt", "127.0.0.1")
    request = serialized("upload_part", Bucket="data", Key="k", PartNumber=3, UploadId="u/1",
                         Body=b"")
    assert client._target(request) == ("/data/k?partNumber=3&uploadId=u%2F1", "127.0.0.1")
    request = serialized("list_objects_v2", Bucket="data", Prefix="p q/")
    assert client._target(request) == ("/data?list-type=2&prefix=p%20q%2F", "127.0.0.1")


def test_aws_takes_the_bucket_in_the_host_unless_its_name_has_dots():
    client = S3Client(S3Settings(bucket="photos", region="eu-west-1"))
    assert (client.tls, client.port) == (True, 443)
    assert client._target(serialized("get_object", Bucket="photos", Key="x/y")) == (
        "/x/y", "photos.s3.eu-west-1.amazonaws.com")
    assert client._target(serialized("head_bucket", Bucket="photos")) == (
        "/", "photos.s3.eu-west-1.amazonaws.com")
    assert client._target(serialized("list_multipart_uploads", Bucket="photos")) == (
        "/?uploads", "photos.s3.eu-west-1.amazonaws.com")
    dotted = S3Client(S3Settings(bucket="my.photos", region="eu-west-1"))
    assert dotted._target(serialized("get_object", Bucket="my.photos", Key="x")) == (
        "/my.photos/x", "s3.eu-west-1.amazonaws.com")


def test_a_copy_source_is_percent_encoded():
    request = serialized("copy_object", Bucket="b", Key="to",
                         CopySource={"Bucket": "b", "Key": "from here/ü"})
    assert request["headers"]["x-amz-copy-source"] == "b/from%20here/%C3%BC"


def test_the_signature_is_botocores_own(monkeypatch):
    """Our request, signed, carries the Authorization botocore's client sends for it."""
    import asyncio

    import botocore.auth
    import botocore.session
    from botocore.awsrequest import AWSRequest, AWSResponse
    from botocore.config import Config

    frozen = datetime.datetime(2026, 12, 4, 12, 0, 0)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: frozen)
    endpoint = "https://store.example:9443"
    client = botocore.session.get_session().create_client(
        "s3", region_name="eu-west-1", endpoint_url=endpoint, aws_access_key_id="AK",
        aws_secret_access_key="SK", config=Config(
            signature_version="s3v4", s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required"))
    sent = {}

    def capture(request, **_):
        sent.update((k, v.decode() if isinstance(v, bytes) else v)
                    for k, v in request.headers.items())
        return AWSResponse(request.url, 200, {}, None)

    client.meta.events.register("before-send", capture)
    client.get_object(Bucket="bkt", Key="a/b.txt", Range="bytes=0-9")
    ours = S3Client(S3Settings(bucket="bkt", region="eu-west-1", endpoint=endpoint,
                               access_key="AK", secret_key="SK"))
    request = serialized("get_object", Bucket="bkt", Key="a/b.txt", Range="bytes=0-9")
    target, host = ours._target(request)
    # botocore's client hashes even an empty payload: signed so, our request (its path,
    # query, host and headers) carries the very signature botocore's client sent ...
    from botocore.auth import S3SigV4Auth
    from botocore.credentials import Credentials
    signed = AWSRequest(method="GET", url=f"https://{host}:9443{target}",
                        headers=dict(request["headers"]))
    S3SigV4Auth(Credentials("AK", "SK"), "s3", "eu-west-1").add_auth(signed)
    assert signed.headers["X-Amz-Date"] == sent["X-Amz-Date"] == "20261204T120000Z"
    assert signed.headers["Authorization"] == sent["Authorization"]
    # ... and ours differs only in leaving the payload out.
    unsigned = AWSRequest(method="GET", url=f"https://{host}:9443{target}",
                          headers=dict(request["headers"]))
    asyncio.run(ours._signer()).add_auth(unsigned)
    assert unsigned.headers["X-Amz-Content-SHA256"] == "UNSIGNED-PAYLOAD"
    assert unsigned.headers["Authorization"].split("Signature=")[0] == \
        sent["Authorization"].split("Signature=")[0]


@pytest.mark.parametrize("code,status,expected", [
    ("NoSuchKey", 404, errors.NotFound), ("404", 404, errors.NotFound),
    ("PreconditionFailed", 412, errors.WriteConflict),
    ("SlowDown", 503, errors.ServiceUnavailable), ("InternalError", 500, errors.ServiceUnavailable),
    ("AccessDenied", 403, errors.InternalError), ("InvalidAccessKeyId", 403, errors.InternalError),
])
def test_s3_errors_become_the_apis(code, status, expected):
    error = ClientError({"Error": {"Code": code, "Message": "<xml> from the store"},
                         "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")
    mapped = translate(error, "S3 get_object k")
    assert type(mapped) is expected or isinstance(mapped, expected)
    if expected in (errors.ServiceUnavailable, errors.InternalError):
        assert code in str(mapped)  # for the log; the API's renderer masks it


def test_an_unreachable_store_is_unavailable():
    mapped = translate(PeerError("127.0.0.1:1 is unreachable: refused"), "S3 head_bucket")
    assert isinstance(mapped, errors.ServiceUnavailable) and "unreachable" in str(mapped)


def test_only_a_plain_http_store_hands_its_socket_over():
    from callfs.backends.base import Capability
    from callfs.backends.s3 import S3Backend
    plain = S3Backend(S3Settings(bucket="b", endpoint="http://127.0.0.1:9000"))
    assert Capability.SOCKET_BODY in plain.capabilities
    for endpoint in ("https://minio.example:9000", ""):
        tls = S3Backend(S3Settings(bucket="b", endpoint=endpoint))
        assert Capability.SOCKET_BODY not in tls.capabilities
    assert Capability.SOCKET_BODY not in S3Backend.capabilities  # (decided per store)
