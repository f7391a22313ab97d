# cython: language_level=3
"""Single-use link tokens in the reference's format (API.md §10.2), signed with OpenSSL.

token = id + "." + sig: id is 16 random bytes in base64url with padding (24 characters), sig
is HMAC-SHA256(SHA-256(link secret), id + canonical path) in base64url with padding (44).
A signer prepares the key once (the two padded key blocks already absorbed by SHA-256), so
signing costs two digest finalisations. `well_formed` refuses a presented token that no
server could have issued before anyone asks the database about it.

The plain-Python specification is tests/unit/token_oracle.py.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeASCII

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object text, Py_ssize_t* size) except NULL

cdef extern from "openssl/evp.h" nogil:
    ctypedef struct EVP_MD:
        pass
    const EVP_MD* EVP_sha256()
    EVP_MD_CTX* EVP_MD_CTX_new()
    void EVP_MD_CTX_free(EVP_MD_CTX* ctx)
    int EVP_DigestInit_ex(EVP_MD_CTX* ctx, const EVP_MD* kind, void* engine)
    int EVP_DigestUpdate(EVP_MD_CTX* ctx, const void* data, size_t count)
    int EVP_DigestFinal_ex(EVP_MD_CTX* ctx, unsigned char* md, unsigned int* size)
    int EVP_MD_CTX_copy_ex(EVP_MD_CTX* dst, const EVP_MD_CTX* src)
    int EVP_Digest(const void* data, size_t count, unsigned char* md, unsigned int* size,
                   const EVP_MD* kind, void* engine)

cdef extern from "openssl/crypto.h" nogil:
    int CRYPTO_memcmp(const void* a, const void* b, size_t length)
    void OPENSSL_cleanse(void* ptr, size_t length)

cdef extern from "openssl/rand.h" nogil:
    int RAND_bytes(unsigned char* buf, int num)

cdef enum:
    BLOCK_BYTES = 64   # SHA-256's block: HMAC pads its key to this (RFC 2104)
    SIG_START = ID_CHARS + 1

cdef const char* ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

# Value of each base64url character, -1 for every other byte.
cdef signed char VALUE[256]
cdef int _fill_values():
    cdef int i
    for i in range(256):
        VALUE[i] = -1
    for i in range(64):
        VALUE[<unsigned char>ALPHABET[i]] = i
    return 0
_fill_values()


cdef void _b64url(const unsigned char* src, Py_ssize_t n, char* dst) noexcept nogil:
    """base64url with '=' padding: 4 * ceil(n / 3) characters into dst."""
    cdef Py_ssize_t i = 0, o = 0
    cdef unsigned int v
    while i + 3 <= n:
        v = (src[i] << 16) | (src[i + 1] << 8) | src[i + 2]
        dst[o] = ALPHABET[(v >> 18) & 63]
        dst[o + 1] = ALPHABET[(v >> 12) & 63]
        dst[o + 2] = ALPHABET[(v >> 6) & 63]
        dst[o + 3] = ALPHABET[v & 63]
        i += 3
        o += 4
    if n - i == 1:
        v = src[i] << 16
        dst[o] = ALPHABET[(v >> 18) & 63]
        dst[o + 1] = ALPHABET[(v >> 12) & 63]
        dst[o + 2] = c'='
        dst[o + 3] = c'='
    elif n - i == 2:
        v = (src[i] << 16) | (src[i + 1] << 8)
        dst[o] = ALPHABET[(v >> 18) & 63]
        dst[o + 1] = ALPHABET[(v >> 12) & 63]
        dst[o + 2] = ALPHABET[(v >> 6) & 63]
        dst[o + 3] = c'='


cdef bint _canonical_part(const unsigned char* s, Py_ssize_t chars, Py_ssize_t pad,
                          unsigned int spare_mask) noexcept nogil:
    """`chars` base64url characters, then `pad` '=': the canonical encoding of whole bytes, so
    the bits the last character carries beyond them (`spare_mask`) are zero."""
    cdef Py_ssize_t i
    for i in range(chars):
        if VALUE[s[i]] < 0:
            return False
    if <unsigned int>VALUE[s[chars - 1]] & spare_mask:
        return False
    for i in range(chars, chars + pad):
        if s[i] != c'=':
            return False
    return True


cdef bint _well_formed(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    # 16 bytes: 22 characters (the last carries 4 spare bits) + "=="; 32 bytes: 43 (2 spare) + "=".
    return (n == TOKEN_CHARS and s[ID_CHARS] == c'.'
            and _canonical_part(s, ID_CHARS - 2, 2, 0x0F)
            and _canonical_part(s + SIG_START, SIG_CHARS - 1, 1, 0x03))


cdef const unsigned char* _token_bytes(object token, Py_ssize_t* n) except NULL:
    if isinstance(token, bytes):
        n[0] = PyBytes_GET_SIZE(token)
        return <const unsigned char*>PyBytes_AS_STRING(token)
    if isinstance(token, str):
        return <const unsigned char*>PyUnicode_AsUTF8AndSize(token, n)
    raise TypeError(f"a token is str or bytes, not {type(token).__name__}")


cpdef bint well_formed(object token):
    """Whether `token` (str or bytes) has the exact shape of API.md §10.2: 69 characters, a
    24-character id ending "==", one '.', a 44-character signature ending "=", both the
    canonical base64url of 16 and 32 bytes."""
    cdef Py_ssize_t n
    cdef const unsigned char* s = _token_bytes(token, &n)
    return _well_formed(s, n)


cpdef bint same_bytes(bytes a, bytes b):
    """Equal contents, compared in time that depends on the length only."""
    if a is None or b is None:
        raise TypeError("same_bytes() needs bytes")
    if PyBytes_GET_SIZE(a) != PyBytes_GET_SIZE(b):
        return False
    return CRYPTO_memcmp(PyBytes_AS_STRING(a), PyBytes_AS_STRING(b), PyBytes_GET_SIZE(a)) == 0


cdef int _digest_step(int ok) except -1:
    if ok != 1:
        raise MemoryError("OpenSSL could not compute SHA-256")
    return 0


cdef EVP_MD_CTX* _keyed(const unsigned char* key, unsigned char pad) except NULL:
    """A SHA-256 context that has absorbed the 64-byte block (key ^ pad)."""
    cdef unsigned char block[BLOCK_BYTES]
    cdef int i
    for i in range(BLOCK_BYTES):
        block[i] = (key[i] if i < DIGEST_BYTES else 0) ^ pad
    cdef EVP_MD_CTX* ctx = EVP_MD_CTX_new()
    if ctx == NULL:
        raise MemoryError()
    cdef bint ok = (EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1
                    and EVP_DigestUpdate(ctx, block, BLOCK_BYTES) == 1)
    OPENSSL_cleanse(block, BLOCK_BYTES)
    if not ok:
        EVP_MD_CTX_free(ctx)
        raise MemoryError("OpenSSL could not compute SHA-256")
    return ctx


cdef class LinkSigner:
    """Signs and verifies tokens for one link secret (str: its UTF-8 bytes, or bytes). Only
    the prepared digest states are kept, never the secret or the key."""

    def __cinit__(self, secret):
        if isinstance(secret, str):
            secret = (<str>secret).encode("utf-8")
        if not isinstance(secret, bytes):
            raise TypeError("the link secret is str or bytes")
        cdef unsigned char key[DIGEST_BYTES]
        cdef unsigned int size = 0
        try:
            _digest_step(EVP_Digest(PyBytes_AS_STRING(secret), PyBytes_GET_SIZE(secret), key,
                                    &size, EVP_sha256(), NULL))
            self.inner = _keyed(key, 0x36)
            self.outer = _keyed(key, 0x5C)
        finally:
            OPENSSL_cleanse(key, DIGEST_BYTES)
        self.work = EVP_MD_CTX_new()
        if self.work == NULL:
            raise MemoryError()

    def __dealloc__(self):
        EVP_MD_CTX_free(self.inner)
        EVP_MD_CTX_free(self.outer)
        EVP_MD_CTX_free(self.work)

    cdef int _mac(self, const unsigned char* token_id, Py_ssize_t id_len, str path,
                  unsigned char* out) except -1:
        """HMAC-SHA256(key, token_id + UTF-8 of path) into out (32 bytes)."""
        cdef Py_ssize_t path_len
        cdef const char* path_bytes = PyUnicode_AsUTF8AndSize(path, &path_len)
        cdef unsigned char inner_digest[DIGEST_BYTES]
        cdef unsigned int size = 0
        cdef EVP_MD_CTX* work = self.work
        _digest_step(EVP_MD_CTX_copy_ex(work, self.inner))
        _digest_step(EVP_DigestUpdate(work, token_id, id_len))
        _digest_step(EVP_DigestUpdate(work, path_bytes, path_len))
        _digest_step(EVP_DigestFinal_ex(work, inner_digest, &size))
        _digest_step(EVP_MD_CTX_copy_ex(work, self.outer))
        _digest_step(EVP_DigestUpdate(work, inner_digest, DIGEST_BYTES))
        _digest_step(EVP_DigestFinal_ex(work, out, &size))
        return 0

    cpdef str signature(self, str token_id, str path):
        """The 44-character sig of API.md §10.2 for `token_id` and the canonical `path`."""
        if token_id is None or path is None:
            raise TypeError("signature() needs str arguments")
        cdef Py_ssize_t id_len
        cdef const char* id_bytes = PyUnicode_AsUTF8AndSize(token_id, &id_len)
        cdef unsigned char mac[DIGEST_BYTES]
        cdef char text[SIG_CHARS]
        self._mac(<const unsigned char*>id_bytes, id_len, path, mac)
        _b64url(mac, DIGEST_BYTES, text)
        return PyUnicode_DecodeASCII(text, SIG_CHARS, NULL)

    cpdef str token_for(self, bytes raw_id, str path):
        """The token of the 16-byte id `raw_id` for the canonical `path`."""
        if raw_id is None or path is None:
            raise TypeError("token_for() needs bytes and str")
        if PyBytes_GET_SIZE(raw_id) != ID_BYTES:
            raise ValueError("a token id is 16 bytes")
        cdef char text[TOKEN_CHARS]
        cdef unsigned char mac[DIGEST_BYTES]
        _b64url(<const unsigned char*>PyBytes_AS_STRING(raw_id), ID_BYTES, text)
        text[ID_CHARS] = c'.'
        self._mac(<const unsigned char*>text, ID_CHARS, path, mac)
        _b64url(mac, DIGEST_BYTES, text + SIG_START)
        return PyUnicode_DecodeASCII(text, TOKEN_CHARS, NULL)

    cpdef str issue(self, str path):
        """A new token for the canonical `path`, its id from OpenSSL's random generator."""
        cdef unsigned char raw[ID_BYTES]
        if RAND_bytes(raw, ID_BYTES) != 1:
            raise RuntimeError("OpenSSL's random generator failed")
        return self.token_for(raw[:ID_BYTES], path)

    cpdef bint verify(self, object token, str path):
        """Whether `token` is well formed and signed for `path` (compared in constant time)."""
        if path is None:
            raise TypeError("verify() needs a str path")
        cdef Py_ssize_t n
        cdef const unsigned char* s = _token_bytes(token, &n)
        if not _well_formed(s, n):
            return False
        cdef unsigned char mac[DIGEST_BYTES]
        cdef char expected[SIG_CHARS]
        self._mac(s, ID_CHARS, path, mac)
        _b64url(mac, DIGEST_BYTES, expected)
        return CRYPTO_memcmp(expected, s + SIG_START, SIG_CHARS) == 0
