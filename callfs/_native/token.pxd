# cython: language_level=3
# Single-use link tokens (API.md §10.2); see token.pyx.

cdef extern from "openssl/evp.h" nogil:
    ctypedef struct EVP_MD_CTX:
        pass

cdef enum:
    ID_BYTES = 16      # random bytes of a token's id
    ID_CHARS = 24      # the id in base64url with padding
    SIG_CHARS = 44     # HMAC-SHA256 in base64url with padding
    TOKEN_CHARS = 69   # id + '.' + sig
    DIGEST_BYTES = 32  # SHA-256

cpdef bint well_formed(object token)
cpdef bint same_bytes(bytes a, bytes b)

cdef class LinkSigner:
    cdef EVP_MD_CTX* inner   # SHA-256 having absorbed key ^ ipad
    cdef EVP_MD_CTX* outer   # SHA-256 having absorbed key ^ opad
    cdef EVP_MD_CTX* work
    cdef int _mac(self, const unsigned char* token_id, Py_ssize_t id_len, str path,
                  unsigned char* out) except -1
    cpdef str signature(self, str token_id, str path)
    cpdef str token_for(self, bytes raw_id, str path)
    cpdef str issue(self, str path)
    cpdef bint verify(self, object token, str path)
