/* SHA-256 (FIPS 180-4) and HMAC-SHA-256 (RFC 2104) with precomputed key states,
 * so one tag costs two compression runs over a short packet. No allocation. */
#ifndef PF_HMAC_SHA256_H
#define PF_HMAC_SHA256_H
#include <stddef.h>
#include <stdint.h>

typedef struct { uint32_t h[8]; uint64_t len; uint8_t buf[64]; size_t fill; } pf_sha256;
typedef struct { pf_sha256 inner, outer; } pf_hmac_key;

void pf_sha256_init(pf_sha256 *s);
void pf_sha256_update(pf_sha256 *s, const uint8_t *p, size_t n);
void pf_sha256_final(pf_sha256 *s, uint8_t out[32]);
void pf_hmac_init(pf_hmac_key *k, const uint8_t *key, size_t n);
void pf_hmac(const pf_hmac_key *k, const uint8_t *p, size_t n, uint8_t out[32]);
#endif
