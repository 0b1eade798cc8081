/*
 * txgate native SPKI core. See spki.h for the contract.
 *
 * The DER walker is mirrored line for line by the pure-Python fallback in txgate/pins.py
 * (_DerWalker): both must accept and reject the same inputs with the same reason code, so a
 * change here needs the same change there (tests/test_pins.py checks that they agree).
 */
#define _DEFAULT_SOURCE /* posix_memalign, madvise under -std=c99 */
#include "spki.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include <openssl/crypto.h>
#include <openssl/evp.h>

/* ------------------------------------------------------------------------------------------ */
/* Strict DER                                                                                  */

#define TAG_INTEGER 0x02
#define TAG_BIT_STRING 0x03
#define TAG_SEQUENCE 0x30
#define TAG_CTX0_CONS 0xa0 /* [0] EXPLICIT version */
#define TAG_CTX1_PRIM 0x81 /* [1] IMPLICIT issuerUniqueID */
#define TAG_CTX2_PRIM 0x82 /* [2] IMPLICIT subjectUniqueID */
#define TAG_CTX3_CONS 0xa3 /* [3] EXPLICIT extensions */

/*
 * Read the TLV that must start at buf[pos] with tag `tag`, inside the enclosing element that
 * ends at `end` (end <= buffer length). On success stores the content bounds [*c0, *c1).
 * Every arithmetic step is checked against `end` before any byte is read.
 */
static int tlv(const unsigned char *buf, size_t pos, size_t end, unsigned char tag, size_t *c0,
               size_t *c1)
{
    size_t len, hdr;
    unsigned char first;

    if (pos >= end)
        return TXG_E_TRUNCATED;
    if (buf[pos] != tag)
        return TXG_E_TAG;
    if (end - pos < 2)
        return TXG_E_TRUNCATED;
    first = buf[pos + 1];
    if (first < 0x80) {
        len = first;
        hdr = 2;
    } else if (first == 0x80) {
        return TXG_E_INDEFINITE;
    } else {
        size_t n = first & 0x7f, i;
        if (n > 4) /* also the reserved 0xff; a minimal >4-byte length would be >= 4 GiB */
            return TXG_E_LENGTH;
        if (end - pos - 2 < n)
            return TXG_E_TRUNCATED;
        if (buf[pos + 2] == 0)
            return TXG_E_NONMINIMAL;
        len = 0;
        for (i = 0; i < n; i++)
            len = (len << 8) | buf[pos + 2 + i];
        if (len < 0x80)
            return TXG_E_NONMINIMAL;
        hdr = 2 + n;
    }
    if (len > end - pos - hdr)
        return TXG_E_TRUNCATED;
    *c0 = pos + hdr;
    *c1 = pos + hdr + len;
    return 0;
}

#define TRY(expr)                                                                              \
    do {                                                                                       \
        int rc_ = (expr);                                                                      \
        if (rc_ != 0)                                                                          \
            return rc_;                                                                        \
    } while (0)

/*
 * Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue BIT STRING }
 * TBSCertificate ::= SEQUENCE { [0] version OPTIONAL, serialNumber INTEGER, signature SEQUENCE,
 *     issuer SEQUENCE, validity SEQUENCE, subject SEQUENCE, subjectPublicKeyInfo SEQUENCE,
 *     [1] issuerUniqueID OPTIONAL, [2] subjectUniqueID OPTIONAL, [3] extensions OPTIONAL }
 * SubjectPublicKeyInfo ::= SEQUENCE { algorithm SEQUENCE, subjectPublicKey BIT STRING }
 * The walk is in document order; the first defect found is the one reported.
 */
int txg_spki_locate(const unsigned char *buf, size_t end, size_t *spki_off, size_t *spki_len)
{
    size_t c0, c1, t0, t1, v0, v1, i0, i1, x0, x1, k0, k1, a0, a1, b0, b1, p, spki_start;
    int i;
    static const unsigned char tail_tags[3] = {TAG_CTX1_PRIM, TAG_CTX2_PRIM, TAG_CTX3_CONS};

    if (buf == NULL && end != 0)
        return TXG_E_ARG;

    TRY(tlv(buf, 0, end, TAG_SEQUENCE, &c0, &c1)); /* Certificate */
    if (c1 != end)
        return TXG_E_TRAILING;
    TRY(tlv(buf, c0, c1, TAG_SEQUENCE, &t0, &t1)); /* tbsCertificate */

    p = t0;
    if (p < t1 && buf[p] == TAG_CTX0_CONS) { /* version */
        TRY(tlv(buf, p, t1, TAG_CTX0_CONS, &v0, &v1));
        TRY(tlv(buf, v0, v1, TAG_INTEGER, &i0, &i1));
        if (i1 == i0)
            return TXG_E_EMPTY;
        if (i1 != v1)
            return TXG_E_TRAILING;
        p = v1;
    }
    TRY(tlv(buf, p, t1, TAG_INTEGER, &i0, &i1)); /* serialNumber */
    if (i1 == i0)
        return TXG_E_EMPTY;
    p = i1;
    for (i = 0; i < 4; i++) { /* signature, issuer, validity, subject */
        TRY(tlv(buf, p, t1, TAG_SEQUENCE, &x0, &x1));
        p = x1;
    }
    spki_start = p;
    TRY(tlv(buf, p, t1, TAG_SEQUENCE, &k0, &k1)); /* subjectPublicKeyInfo */
    TRY(tlv(buf, k0, k1, TAG_SEQUENCE, &a0, &a1)); /* algorithm */
    TRY(tlv(buf, a1, k1, TAG_BIT_STRING, &b0, &b1)); /* subjectPublicKey */
    if (b1 == b0)
        return TXG_E_EMPTY;
    if (b1 != k1)
        return TXG_E_TRAILING;
    p = k1;
    for (i = 0; i < 3; i++) { /* optional tail, in order */
        if (p < t1 && buf[p] == tail_tags[i]) {
            TRY(tlv(buf, p, t1, tail_tags[i], &x0, &x1));
            p = x1;
        }
    }
    if (p != t1)
        return TXG_E_TRAILING;

    p = t1;
    TRY(tlv(buf, p, c1, TAG_SEQUENCE, &x0, &x1)); /* signatureAlgorithm */
    p = x1;
    TRY(tlv(buf, p, c1, TAG_BIT_STRING, &x0, &x1)); /* signatureValue */
    if (x1 == x0)
        return TXG_E_EMPTY;
    if (x1 != c1)
        return TXG_E_TRAILING;

    if (spki_off != NULL)
        *spki_off = spki_start;
    if (spki_len != NULL)
        *spki_len = k1 - spki_start;
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* SHA-256 through EVP, with the implementation fetched once (OpenSSL 3 would otherwise do an  */
/* implicit fetch, with its locks, on every EVP_DigestInit_ex(EVP_sha256())).                  */

static EVP_MD *sha256_md = NULL;
static CRYPTO_ONCE sha256_once = CRYPTO_ONCE_STATIC_INIT;

static void sha256_init(void)
{
    sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
}

static const EVP_MD *sha256(void)
{
    if (!CRYPTO_THREAD_run_once(&sha256_once, sha256_init))
        return NULL;
    return sha256_md;
}

static int digest(EVP_MD_CTX *ctx, const EVP_MD *md, const unsigned char *data, size_t len,
                  unsigned char *out)
{
    unsigned int outlen = 0;
    if (EVP_DigestInit_ex2(ctx, md, NULL) != 1 || EVP_DigestUpdate(ctx, data, len) != 1 ||
        EVP_DigestFinal_ex(ctx, out, &outlen) != 1 || outlen != TXG_DIGEST_LEN)
        return TXG_E_CRYPTO;
    return 0;
}

int txg_spki_sha256(const unsigned char *der, size_t der_len, unsigned char *out)
{
    size_t off = 0, len = 0;
    const EVP_MD *md;
    EVP_MD_CTX *ctx;
    int rc;

    if (out == NULL)
        return TXG_E_ARG;
    TRY(txg_spki_locate(der, der_len, &off, &len));
    if ((md = sha256()) == NULL || (ctx = EVP_MD_CTX_new()) == NULL)
        return TXG_E_CRYPTO;
    rc = digest(ctx, md, der + off, len, out);
    EVP_MD_CTX_free(ctx);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* Pin set: open addressing with linear probing, keyed on the first 8 digest bytes (SHA-256    */
/* output is already uniform). Slots hold whole digests; a bitmap says which are used, so the  */
/* common lookup touches the (small, cache-resident) bitmap and one slot.                      */

struct txg_pinset {
    size_t mask;  /* capacity - 1, capacity a power of two >= 2 * count */
    size_t count; /* distinct digests */
    unsigned char *slots; /* capacity * 32 bytes */
    uint64_t *used;       /* capacity bits */
};

static size_t slot_hash(const unsigned char *d)
{
    uint64_t h;
    memcpy(&h, d, sizeof h);
    return (size_t)h;
}

static int is_used(const txg_pinset *s, size_t i)
{
    return (int)((s->used[i >> 6] >> (i & 63)) & 1);
}

#define HUGE_PAGE ((size_t)2 << 20)

/* Large tables (>= 2 MiB, ~32k pins) ask for transparent huge pages: a lookup then costs one
 * cache miss instead of a cache miss plus a page walk, which keeps 1M pins as fast as 1. */
static unsigned char *alloc_slots(size_t bytes)
{
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (bytes >= HUGE_PAGE) {
        void *p = NULL;
        if (posix_memalign(&p, HUGE_PAGE, bytes) != 0)
            return NULL;
        (void)madvise(p, bytes, MADV_HUGEPAGE); /* advisory: failure only costs speed */
        return p;
    }
#endif
    return malloc(bytes);
}

void txg_pinset_free(txg_pinset *set)
{
    if (set == NULL)
        return;
    free(set->slots);
    free(set->used);
    free(set);
}

txg_pinset *txg_pinset_new(const unsigned char *digests, size_t count, int *err)
{
    txg_pinset *s;
    size_t cap = 4, k, i;
    int dummy;

    if (err == NULL)
        err = &dummy;
    *err = 0;
    if (digests == NULL && count != 0) {
        *err = TXG_E_ARG;
        return NULL;
    }
    /* 2^27 slots (4 GiB of digests) is far beyond any configuration; refuse rather than overflow. */
    if (count > ((size_t)1 << 26)) {
        *err = TXG_E_ARG;
        return NULL;
    }
    while (cap < 2 * count)
        cap <<= 1;
    s = calloc(1, sizeof *s);
    if (s == NULL) {
        *err = TXG_E_NOMEM;
        return NULL;
    }
    s->mask = cap - 1;
    s->slots = alloc_slots(cap * TXG_DIGEST_LEN);
    s->used = calloc((cap + 63) / 64, sizeof(uint64_t));
    if (s->slots == NULL || s->used == NULL) {
        txg_pinset_free(s);
        *err = TXG_E_NOMEM;
        return NULL;
    }
    for (k = 0; k < count; k++) {
        const unsigned char *d = digests + k * TXG_DIGEST_LEN;
        /* Building happens once, from configuration: plain memcmp is fine here. */
        for (i = slot_hash(d) & s->mask; is_used(s, i); i = (i + 1) & s->mask)
            if (memcmp(s->slots + i * TXG_DIGEST_LEN, d, TXG_DIGEST_LEN) == 0)
                break;
        if (!is_used(s, i)) {
            memcpy(s->slots + i * TXG_DIGEST_LEN, d, TXG_DIGEST_LEN);
            s->used[i >> 6] |= (uint64_t)1 << (i & 63);
            s->count++;
        }
    }
    return s;
}

size_t txg_pinset_len(const txg_pinset *set)
{
    return set == NULL ? 0 : set->count;
}

/*
 * The probe sequence depends only on the digest's own first 8 bytes (and the table layout);
 * each probed slot is compared over all 32 bytes with CRYPTO_memcmp, and the only branch taken
 * on the result is "equal or not": nothing depends on how many bytes matched.
 */
int txg_pinset_contains(const txg_pinset *set, const unsigned char *digest)
{
    size_t i;

    if (set == NULL || digest == NULL)
        return 0;
    for (i = slot_hash(digest) & set->mask; is_used(set, i); i = (i + 1) & set->mask)
        if (CRYPTO_memcmp(set->slots + i * TXG_DIGEST_LEN, digest, TXG_DIGEST_LEN) == 0)
            return 1;
    return 0;
}

static void prefetch_slot(const txg_pinset *set, const unsigned char *digest)
{
#if defined(__GNUC__) || defined(__clang__)
    __builtin_prefetch(set->slots + (slot_hash(digest) & set->mask) * TXG_DIGEST_LEN);
#else
    (void)set;
    (void)digest;
#endif
}

/* ------------------------------------------------------------------------------------------ */
/* Chains                                                                                      */

#define BATCH 8

int txg_chain_first_match(const txg_pinset *set, const unsigned char *buf, size_t buf_len,
                          const size_t *lens, size_t count, size_t *bad_index)
{
    size_t stack_off[BATCH * 2], stack_len[BATCH * 2];
    size_t *offs = stack_off, *spl = stack_len;
    unsigned char dig[BATCH][TXG_DIGEST_LEN];
    size_t i, pos = 0, b, n;
    const EVP_MD *md;
    EVP_MD_CTX *ctx = NULL;
    int rc = TXG_NO_MATCH;

    if (bad_index != NULL)
        *bad_index = 0;
    if (set == NULL || (count > 0 && lens == NULL) || (buf == NULL && buf_len != 0) ||
        count > (size_t)INT_MAX)
        return TXG_E_ARG;
    for (i = 0; i < count; i++) { /* lengths must tile the buffer exactly */
        if (lens[i] > buf_len - pos)
            return TXG_E_ARG;
        pos += lens[i];
    }
    if (pos != buf_len)
        return TXG_E_ARG;
    if (count == 0)
        return TXG_NO_MATCH;

    if (count > BATCH * 2) {
        offs = malloc(count * sizeof *offs);
        spl = malloc(count * sizeof *spl);
        if (offs == NULL || spl == NULL) {
            rc = TXG_E_NOMEM;
            goto done;
        }
    }

    /* 1. Walk every certificate: a malformed one anywhere fails the whole chain. */
    for (i = 0, pos = 0; i < count; pos += lens[i], i++) {
        int wrc = txg_spki_locate(buf + pos, lens[i], &offs[i], &spl[i]);
        if (wrc != 0) {
            if (bad_index != NULL)
                *bad_index = i;
            rc = wrc;
            goto done;
        }
        offs[i] += pos;
    }

    /* 2. Hash a batch, prefetch the slots each digest will probe, then look up in order. */
    if ((md = sha256()) == NULL || (ctx = EVP_MD_CTX_new()) == NULL) {
        rc = TXG_E_CRYPTO;
        goto done;
    }
    for (b = 0; b < count; b += BATCH) {
        n = count - b < BATCH ? count - b : BATCH;
        for (i = 0; i < n; i++) {
            int hrc = digest(ctx, md, buf + offs[b + i], spl[b + i], dig[i]);
            if (hrc != 0) {
                rc = hrc;
                goto done;
            }
            prefetch_slot(set, dig[i]);
        }
        for (i = 0; i < n; i++) {
            if (txg_pinset_contains(set, dig[i])) {
                rc = (int)(b + i);
                goto done;
            }
        }
    }

done:
    EVP_MD_CTX_free(ctx);
    if (offs != stack_off)
        free(offs);
    if (spl != stack_len)
        free(spl);
    return rc;
}

int txg_chain_first_match4(const txg_pinset *set, const unsigned char *buf, size_t buf_len,
                           size_t count, size_t len0, size_t len1, size_t len2, size_t len3)
{
    size_t lens[4];
    lens[0] = len0;
    lens[1] = len1;
    lens[2] = len2;
    lens[3] = len3;
    if (count > 4)
        return TXG_E_ARG;
    return txg_chain_first_match(set, buf, buf_len, lens, count, NULL);
}

const char *txg_openssl_version(void)
{
    return OpenSSL_version(OPENSSL_VERSION);
}
