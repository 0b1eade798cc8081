/*
 * txgate native SPKI core: strict DER walk from an X.509 certificate to its
 * SubjectPublicKeyInfo, SHA-256 of that SPKI, and a constant-time pin set.
 *
 * Only bytes cross this boundary (never OpenSSL objects): the caller's OpenSSL
 * (pyOpenSSL / cryptography) is a different copy from the libcrypto linked here.
 */
#ifndef TXGATE_SPKI_H
#define TXGATE_SPKI_H

#include <stddef.h>
#include <stdint.h>

#define TXG_DIGEST_LEN 32

/* Results. >= 0 is a certificate index; -1 means "no certificate pinned". */
#define TXG_NO_MATCH -1
/* Caller errors (not about the certificate bytes). */
#define TXG_E_ARG -2      /* NULL pointer, lengths that do not add up, too many items */
#define TXG_E_NOMEM -3
#define TXG_E_CRYPTO -4   /* libcrypto failed to hash */
/* Malformed DER: every code <= TXG_E_MALFORMED is a reason a certificate was rejected. */
#define TXG_E_MALFORMED -10     /* lowest-numbered of the malformed family (also: generic) */
#define TXG_E_TRUNCATED -10     /* a header or a content runs past its enclosing element */
#define TXG_E_INDEFINITE -11    /* indefinite length (0x80): BER, not DER */
#define TXG_E_NONMINIMAL -12    /* length not in its shortest form */
#define TXG_E_LENGTH -13        /* length of length > 4 bytes, or the reserved 0xff */
#define TXG_E_TAG -14           /* unexpected tag where a given element must be */
#define TXG_E_TRAILING -15      /* bytes left after the last element of a structure */
#define TXG_E_EMPTY -16         /* zero-length INTEGER or BIT STRING */

#define TXG_IS_MALFORMED(rc) ((rc) <= TXG_E_MALFORMED)

typedef struct txg_pinset txg_pinset;

/* Locate the SubjectPublicKeyInfo TLV (header included) of one DER certificate. 0 or an error. */
int txg_spki_locate(const unsigned char *der, size_t der_len, size_t *spki_off, size_t *spki_len);

/* SHA-256 of the SPKI of one DER certificate into out[32]. 0 or an error. */
int txg_spki_sha256(const unsigned char *der, size_t der_len, unsigned char *out);

/* A pin set built from count*32 bytes of SHA-256 digests (duplicates collapse). NULL on error
 * with *err set. Free with txg_pinset_free. */
txg_pinset *txg_pinset_new(const unsigned char *digests, size_t count, int *err);
void txg_pinset_free(txg_pinset *set);
size_t txg_pinset_len(const txg_pinset *set);
/* 1 if digest[32] is in the set, 0 if not (compares in constant time per probed slot). */
int txg_pinset_contains(const txg_pinset *set, const unsigned char *digest);

/* The chain is `count` DER certificates laid end to end in buf (buf_len bytes), cert i being
 * lens[i] bytes. Every certificate is walked first: a malformed one returns its reason code and
 * stores its index in *bad_index (if not NULL). Otherwise returns the index of the first
 * certificate whose SPKI SHA-256 is in the set, or TXG_NO_MATCH. */
int txg_chain_first_match(const txg_pinset *set, const unsigned char *buf, size_t buf_len,
                          const size_t *lens, size_t count, size_t *bad_index);

/* The same for chains of at most 4 certificates with the lengths as scalars (cheaper to call from
 * Python than building an array); lenN for N >= count are ignored. Reports no bad index: on a
 * malformed result, call txg_chain_first_match for it. */
int txg_chain_first_match4(const txg_pinset *set, const unsigned char *buf, size_t buf_len,
                           size_t count, size_t len0, size_t len1, size_t len2, size_t len3);

/* The libcrypto this module runs on, e.g. "OpenSSL 3.0.22 25 Aug 2026". */
const char *txg_openssl_version(void);

#endif
