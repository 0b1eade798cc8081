/*
 * libFuzzer target over the native SPKI core (native/spki.c), built with ASan + UBSan by
 * tests/fuzz/run.sh. Besides memory safety it checks the functions against each other:
 *   - locate succeeds  =>  the SPKI span lies inside the input, sha256 succeeds and equals
 *     SHA-256 of that span, and a pin set holding that digest matches the certificate at index 0
 *     of a chain (and at index 1 behind a non-matching copy set up to miss);
 *   - locate fails     =>  sha256 and first_match fail with the same malformed reason;
 *   - a chain cut from the input by its first byte gives either a valid index, -1, or the reason
 *     of the first malformed piece, with *bad_index pointing at it;
 *   - a pin set built from 32-byte slices of the input contains each slice.
 * Any disagreement calls abort(), which libFuzzer reports as a crash.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "spki.h"

#define CHECK(cond)                                                                            \
    do {                                                                                       \
        if (!(cond)) {                                                                         \
            fprintf(stderr, "fuzz_spki: check failed: %s (line %d)\n", #cond, __LINE__);       \
            abort();                                                                           \
        }                                                                                      \
    } while (0)

static txg_pinset *decoys; /* random-looking digests that no input will hit */

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    unsigned char d[64 * TXG_DIGEST_LEN];
    size_t i;
    int err = 0;
    (void)argc;
    (void)argv;
    for (i = 0; i < sizeof d; i++)
        d[i] = (unsigned char)(i * 131u + 7u);
    decoys = txg_pinset_new(d, 64, &err);
    CHECK(decoys != NULL && err == 0);
    return 0;
}

static void check_one(const uint8_t *data, size_t size)
{
    size_t off = 0, len = 0, bad = 99;
    unsigned char dig[TXG_DIGEST_LEN], ref[TXG_DIGEST_LEN];
    unsigned int reflen = 0;
    int rc = txg_spki_locate(data, size, &off, &len);
    int hrc = txg_spki_sha256(data, size, dig);
    size_t lens[2] = {size, size};
    unsigned char *two;

    if (rc != 0) {
        CHECK(TXG_IS_MALFORMED(rc));
        CHECK(hrc == rc);
        CHECK(txg_chain_first_match(decoys, data, size, &size, 1, &bad) == rc);
        CHECK(bad == 0);
        return;
    }
    CHECK(hrc == 0);
    CHECK(len >= 2 && off < size && len <= size - off);
    CHECK(EVP_Digest(data + off, len, ref, &reflen, EVP_sha256(), NULL) == 1 && reflen == 32);
    CHECK(memcmp(dig, ref, 32) == 0);
    CHECK(txg_chain_first_match(decoys, data, size, &size, 1, &bad) == TXG_NO_MATCH);

    {
        int err = 0;
        txg_pinset *mine = txg_pinset_new(dig, 1, &err);
        CHECK(mine != NULL && txg_pinset_len(mine) == 1 && txg_pinset_contains(mine, dig));
        CHECK(txg_chain_first_match(mine, data, size, &size, 1, &bad) == 0);
        /* The same certificate twice: the first one matches. */
        two = malloc(2 * size);
        CHECK(two != NULL);
        memcpy(two, data, size);
        memcpy(two + size, data, size);
        CHECK(txg_chain_first_match(mine, two, 2 * size, lens, 2, &bad) == 0);
        CHECK(txg_chain_first_match4(mine, two, 2 * size, 2, size, size, 0, 0) == 0);
        CHECK(txg_chain_first_match4(mine, two, 2 * size, 5, size, size, 0, 0) == TXG_E_ARG);
        /* Lengths that do not tile the buffer are a caller error, never a read past it. */
        lens[1] = size + 1;
        CHECK(txg_chain_first_match(mine, two, 2 * size, lens, 2, &bad) == TXG_E_ARG);
        free(two);
        txg_pinset_free(mine);
    }
}

static void check_chain(const uint8_t *data, size_t size)
{
    /* Chain framing: byte 0 low 2 bits = pieces - 1 (1..4), then a 2-byte big-endian length for
     * every piece but the last, which takes the rest (tests/fuzz/make_corpus.py writes seeds). */
    size_t lens[4], n, i, pos, bad = 99, rest, hdr;
    const uint8_t *body;
    int rc, expect = TXG_NO_MATCH;
    size_t expect_bad = 0;

    if (size < 1)
        return;
    n = (size_t)(data[0] & 3) + 1;
    hdr = 1 + 2 * (n - 1);
    if (size < hdr)
        return;
    body = data + hdr;
    rest = size - hdr;
    for (i = 0, pos = 0; i < n; i++) {
        size_t want = i + 1 == n ? rest - pos : ((size_t)data[1 + 2 * i] << 8) | data[2 + 2 * i];
        if (want > rest - pos)
            want = rest - pos;
        lens[i] = want;
        pos += want;
    }
    for (i = 0, pos = 0; i < n; pos += lens[i], i++) {
        int r = txg_spki_locate(body + pos, lens[i], NULL, NULL);
        if (r != 0) {
            expect = r;
            expect_bad = i;
            break;
        }
    }
    rc = txg_chain_first_match(decoys, body, rest, lens, n, &bad);
    CHECK(rc == expect);
    CHECK(txg_chain_first_match4(decoys, body, rest, n, lens[0], n > 1 ? lens[1] : 0,
                                 n > 2 ? lens[2] : 0, n > 3 ? lens[3] : 0) == expect);
    if (expect != TXG_NO_MATCH)
        CHECK(bad == expect_bad);
    if (expect == TXG_NO_MATCH) {
        /* Pin the last piece: the match is the first piece with the same SPKI digest. */
        unsigned char last[TXG_DIGEST_LEN], d[TXG_DIGEST_LEN];
        size_t first = n;
        int err = 0;
        txg_pinset *s;
        CHECK(txg_spki_sha256(body + rest - lens[n - 1], lens[n - 1], last) == 0);
        for (i = 0, pos = 0; i < n; pos += lens[i], i++) {
            CHECK(txg_spki_sha256(body + pos, lens[i], d) == 0);
            if (memcmp(d, last, sizeof d) == 0) {
                first = i;
                break;
            }
        }
        s = txg_pinset_new(last, 1, &err);
        CHECK(s != NULL);
        CHECK(txg_chain_first_match(s, body, rest, lens, n, &bad) == (int)first);
        CHECK(txg_chain_first_match4(s, body, rest, n, lens[0], n > 1 ? lens[1] : 0,
                                     n > 2 ? lens[2] : 0, n > 3 ? lens[3] : 0) == (int)first);
        txg_pinset_free(s);
    }
}

static void check_pinset(const uint8_t *data, size_t size)
{
    size_t n = size / TXG_DIGEST_LEN, i;
    int err = 0;
    txg_pinset *s;
    unsigned char probe[TXG_DIGEST_LEN];

    if (n == 0)
        return;
    s = txg_pinset_new(data, n, &err);
    CHECK(s != NULL && err == 0);
    CHECK(txg_pinset_len(s) >= 1 && txg_pinset_len(s) <= n);
    for (i = 0; i < n; i++)
        CHECK(txg_pinset_contains(s, data + i * TXG_DIGEST_LEN) == 1);
    /* A digest differing from the first only in its last byte must not be found
     * unless it is itself one of the stored ones. */
    memcpy(probe, data, TXG_DIGEST_LEN);
    probe[TXG_DIGEST_LEN - 1] ^= 0x01;
    {
        int stored = 0;
        for (i = 0; i < n; i++)
            stored |= memcmp(probe, data + i * TXG_DIGEST_LEN, TXG_DIGEST_LEN) == 0;
        CHECK(txg_pinset_contains(s, probe) == stored);
    }
    txg_pinset_free(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* Copy to an exact-size heap buffer so ASan catches a read even one byte past the end. */
    uint8_t *copy = malloc(size ? size : 1);
    if (copy == NULL)
        return 0;
    memcpy(copy, data, size);
    check_one(copy, size);
    check_chain(copy, size);
    check_pinset(copy, size);
    free(copy);
    return 0;
}
