"""An S3-compatible server for the tests: moto's server, started as its own process on a
loopback port (never a mock inside the test process), and a botocore client to inspect the
bucket directly, the way an operator would."""
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

ACCESS_KEY = "callfs-test-key"
SECRET_KEY = "callfs-test-secret"
REGION = "us-east-1"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _moto_command() -> list[str]:
    beside = os.path.join(os.path.dirname(sys.executable), "moto_server")
    if os.path.exists(beside):
        return [beside]
    found = shutil.which("moto_server")
    if found is None:
        raise RuntimeError("moto's server is not installed (pip install 'moto[server]')")
    return [found]


class MotoServer:
    """One moto server process; `endpoint` is its URL. Stop with `stop()`."""

    def __init__(self, port: int | None = None):
        self.port = port or _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY,
                   AWS_DEFAULT_REGION=REGION)
        self.process = subprocess.Popen(_moto_command() + ["-H", "127.0.0.1", "-p",
                                                          str(self.port)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        env=env)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"moto's server exited with {self.process.returncode}")
            try:
                urllib.request.urlopen(self.endpoint + "/moto-api/", timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("moto's server did not answer within 30 s")

    def client(self):
        import botocore.session
        from botocore.config import Config
        return botocore.session.get_session().create_client(
            "s3", endpoint_url=self.endpoint, region_name=REGION,
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
            config=Config(s3={"addressing_style": "path"},
                          request_checksum_calculation="when_required",
                          response_checksum_validation="when_required"))

    def reset(self) -> None:
        """Forget every bucket and object (moto's own API)."""
        request = urllib.request.Request(self.endpoint + "/moto-api/reset", method="POST")
        urllib.request.urlopen(request, timeout=10).close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
