# Extern-only: the parts of OpenSSL's libcrypto (the library CPython's hashlib uses) the HMAC
# needs. SHA256_Init/Update/Final are deprecated in OpenSSL 3 in favour of EVP, whose contexts
# are opaque and allocate when copied; a SHA256_CTX is a plain struct, so a per-key state can
# be copied per packet (setup.py defines OPENSSL_SUPPRESS_DEPRECATED).
from libc.stdint cimport uint8_t
cdef extern from "openssl/sha.h" nogil:
    ctypedef struct SHA256_CTX:
        pass
    int SHA256_Init(SHA256_CTX *c)
    int SHA256_Update(SHA256_CTX *c, const void *data, size_t n)
    int SHA256_Final(uint8_t *md, SHA256_CTX *c)
    uint8_t *SHA256(const uint8_t *d, size_t n, uint8_t *md)

cdef extern from "openssl/crypto.h" nogil:
    # constant time in n: how long it takes tells nothing about where the bytes differ
    int CRYPTO_memcmp(const void *a, const void *b, size_t n)
    void OPENSSL_cleanse(void *p, size_t n)
