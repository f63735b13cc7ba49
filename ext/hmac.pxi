# HMAC-SHA-256 (RFC 2104) on OpenSSL's SHA-256, with the inner and outer hash states of a key
# computed once: a MAC then costs one copy of each state and the compressions of the message
# and of one 32-byte digest. No allocation, no GIL. (wire.pxi truncates it to the tag and
# checks tags in constant time.)

cdef enum:
    _SHA256_BLOCK = 64

cdef struct hmac_key:
    SHA256_CTX inner        # after absorbing key ^ ipad
    SHA256_CTX outer        # after absorbing key ^ opad


cdef void _hmac_init(hmac_key *k, const uint8_t *key, size_t n) noexcept nogil:
    cdef uint8_t block[_SHA256_BLOCK]
    cdef uint8_t pad[_SHA256_BLOCK]
    cdef int i
    memset(block, 0, _SHA256_BLOCK)
    if n > _SHA256_BLOCK:
        SHA256(key, n, block)           # a key longer than a block is hashed first
    else:
        memcpy(block, key, n)
    for i in range(_SHA256_BLOCK):
        pad[i] = block[i] ^ 0x36
    SHA256_Init(&k.inner)
    SHA256_Update(&k.inner, pad, _SHA256_BLOCK)
    for i in range(_SHA256_BLOCK):
        pad[i] = block[i] ^ 0x5c
    SHA256_Init(&k.outer)
    SHA256_Update(&k.outer, pad, _SHA256_BLOCK)
    OPENSSL_cleanse(block, _SHA256_BLOCK)
    OPENSSL_cleanse(pad, _SHA256_BLOCK)


cdef inline void _hmac(const hmac_key *k, const uint8_t *p, size_t n,
                       uint8_t *mac) noexcept nogil:
    # the full 32-byte HMAC of p[:n] into mac
    cdef SHA256_CTX c = k.inner
    SHA256_Update(&c, p, n)
    SHA256_Final(mac, &c)
    c = k.outer
    SHA256_Update(&c, mac, 32)
    SHA256_Final(mac, &c)
