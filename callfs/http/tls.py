"""TLS on the API port (API.md §2): the server's context, the checks of its certificate files,
and how a download travels over TLS.

The context serves TLS 1.2 and 1.3 only (an older ClientHello gets a protocol_version alert),
with ECDHE key exchange and AEAD ciphers only for TLS 1.2 (the TLS 1.3 suites are all AEAD),
no compression, no renegotiation, and ALPN `http/1.1`. It is built once, in the master before
the workers fork, so a file that cannot be used stops the start with a message that names it.

Downloads over TLS cannot use sendfile: the event loop encrypts in user space (uvloop's TLS
transport feeds OpenSSL through memory BIOs), so a file goes out in fixed-size reads
(callfs/http/sending.py). Kernel TLS would let the kernel encrypt what sendfile sends, but it
needs the session keys handed to the socket, which a memory-BIO transport never does; the
probe here only reports whether this kernel could.
"""
import errno
import re
import socket
import ssl

# TLS 1.2 suites: ECDHE for forward secrecy, AES-GCM or ChaCha20-Poly1305 (AEAD) for the
# records; RSA or ECDSA certificates alike. No CBC, RC4, 3DES, static RSA or DHE.
CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL"
ALPN = ["http/1.1"]

_MAX_PEM = 1 << 20  # bytes read of a certificate or key file: a real chain is a few KiB
_CERTIFICATE = b"-----BEGIN CERTIFICATE-----"
_PRIVATE_KEY = re.compile(rb"-----BEGIN ((?:RSA |EC |DSA |ENCRYPTED )?PRIVATE KEY)-----")
_LEGACY_ENCRYPTED = b"Proc-Type: 4,ENCRYPTED"  # a traditional PEM key with a passphrase

_ULP_LIST = "/proc/sys/net/ipv4/tcp_available_ulp"
_TCP_ULP = getattr(socket, "TCP_ULP", 31)  # linux/tcp.h


class CertificateError(Exception):
    """A certificate or key file the server cannot use; the message names the file and why."""


class _Encrypted(Exception):
    pass


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """The API port's context, from PEM files (the chain, the unencrypted key; one file may
    hold both). Raises CertificateError naming the file at fault."""
    cert_name = f"server.cert_file {cert_file}"
    key_name = f"server.key_file {key_file}"
    cert = _read(cert_file, cert_name)
    key = cert if key_file == cert_file else _read(key_file, key_name)
    if _CERTIFICATE not in cert:
        raise CertificateError(f"{cert_name} holds no PEM certificate "
                               f'(no "{_CERTIFICATE.decode()}" line)')
    found = _PRIVATE_KEY.search(key)
    if found is None:
        raise CertificateError(f"{key_name} holds no PEM private key "
                               '(no "-----BEGIN PRIVATE KEY-----" line)')
    if found.group(1) == b"ENCRYPTED PRIVATE KEY" or _LEGACY_ENCRYPTED in key:
        raise _encrypted(key_name)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.maximum_version = ssl.TLSVersion.MAXIMUM_SUPPORTED
    context.set_ciphers(CIPHERS)
    context.options |= (ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
                        | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_SINGLE_ECDH_USE)
    context.set_alpn_protocols(ALPN)
    _check_certificates(cert_file, cert_name)
    try:
        context.load_cert_chain(cert_file, key_file, password=_no_password)
    except _Encrypted:
        raise _encrypted(key_name) from None
    except ssl.SSLError as exc:
        raise CertificateError(_pair_problem(exc, cert_name, key_name)) from None
    except OSError as exc:  # the file changed since it was read
        raise CertificateError(f"{cert_name} or {key_name}: {exc.strerror or exc}") from None
    return context


def _read(path: str, name: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(_MAX_PEM)
    except FileNotFoundError:
        raise CertificateError(f"{name} does not exist") from None
    except PermissionError:
        raise CertificateError(f"{name} cannot be read: permission denied") from None
    except IsADirectoryError:
        raise CertificateError(f"{name} is a directory, not a PEM file") from None
    except OSError as exc:
        raise CertificateError(f"{name} cannot be read: {exc.strerror or exc}") from None


def _check_certificates(cert_file: str, cert_name: str) -> None:
    """Every certificate of the chain parses (OpenSSL would otherwise blame the pair)."""
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        probe.load_verify_locations(cafile=cert_file)
    except ssl.SSLError as exc:
        raise CertificateError(f"{cert_name} holds a damaged PEM certificate "
                               f"({_reason(exc)})") from None


def _pair_problem(exc: ssl.SSLError, cert_name: str, key_name: str) -> str:
    if exc.reason == "KEY_VALUES_MISMATCH":
        return f"{key_name} does not match the certificate in {cert_name}"
    if exc.reason == "NO_CERTIFICATE_ASSIGNED":  # an EC key for an RSA certificate, or so
        return (f"{key_name} does not match the certificate in {cert_name} "
                "(a key of another type)")
    return f"{key_name} holds a damaged or unsupported private key ({_reason(exc)})"


def _reason(exc: ssl.SSLError) -> str:
    # OpenSSL's last word on bad PEM data is only "PEM lib" (no reason code).
    return exc.reason.replace("_", " ").lower() if exc.reason else "OpenSSL cannot decode it"


def _no_password():
    raise _Encrypted()


def _encrypted(key_name: str) -> CertificateError:
    return CertificateError(f"{key_name} is encrypted with a passphrase; CallFS needs the key "
                            "unencrypted (openssl pkey -in KEY -out PLAIN writes one)")


# -- how downloads travel -----------------------------------------------------------------------

def kernel_tls() -> tuple[bool, str]:
    """Whether this kernel can carry TLS records itself: its ULP list names `tls`, or setting
    the `tls` ULP on a connected socket works (which loads the module where one exists)."""
    try:
        with open(_ULP_LIST) as f:
            listed = f.read().split()
    except OSError:
        listed = None
    if listed is not None and "tls" in listed:
        return True, f"{_ULP_LIST} lists tls"
    try:
        _set_tls_ulp()
    except OSError as exc:
        shown = "lists " + " ".join(listed) if listed else "is unreadable"
        why = errno.errorcode.get(exc.errno, str(exc.errno)) if exc.errno else str(exc)
        return False, f"{_ULP_LIST} {shown}; TCP_ULP tls: {why}"
    return True, "TCP_ULP tls is accepted"


def _set_tls_ulp() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        with socket.create_connection(listener.getsockname(), timeout=2) as client:
            accepted, _ = listener.accept()
            accepted.close()
            client.setsockopt(socket.IPPROTO_TCP, _TCP_ULP, b"tls")


def download_path(chunk: int) -> str:
    """The start-up summary's account of a TLS download's path, with the kernel's answer."""
    available, evidence = kernel_tls()
    reads = f"buffered, {chunk // 1024} KiB reads encrypted in user space"
    if available:
        return (f"{reads} (kernel TLS: available ({evidence}), unused: the event loop's TLS "
                "keeps its keys in user space)")
    return f"{reads} (kernel TLS: not available: {evidence})"
