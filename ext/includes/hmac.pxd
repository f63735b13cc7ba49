# Extern-only: the HMAC-SHA-256 helper built with the extension (ext/hmac_sha256.c).
# pf_hmac writes the full 32-byte MAC to out; callers keep its first TAG bytes.
from libc.stdint cimport uint8_t
cdef extern from "hmac_sha256.h" nogil:
    ctypedef struct pf_hmac_key:
        pass
    void pf_hmac_init(pf_hmac_key *k, const uint8_t *key, size_t n)
    void pf_hmac(const pf_hmac_key *k, const uint8_t *p, size_t n, uint8_t *out)
