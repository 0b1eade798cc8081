/* libFuzzer target for native/h2glue.c: the input is a client byte stream (the preface is prepended
 * when missing), fed in pieces whose sizes come from the input itself. The host callbacks check that
 * every header block the glue hands over is self-consistent, answer requests (with and without bodies,
 * small and window-sized, deferred, with trailers), consume body bytes and reset some streams, so both
 * directions run. run.sh builds the glue with TXG_H2_TEST_PADDING (DATA frames padded), and every output
 * is parsed back into whole frames: a DATA frame must carry only the host's bytes, its padding must fit
 * and be zero (the NO_COPY path writes those frames itself). The glue's buffers are released after
 * most takes, as the Python host does. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "h2glue.h"

typedef struct host {
    txg_h2 *h;
    int32_t answer[64];
    size_t nanswer;
    unsigned turn;
} host;

int txg_h2_on_request(void *user, int32_t stream_id, const uint8_t *buf, size_t buf_len, const uint32_t *lens,
                      size_t nfields, int end_stream) {
    host *ho = user;
    size_t i, total = 0;
    (void)end_stream;
    for (i = 0; i < 2 * nfields; i++) total += lens[i];
    if (total != buf_len) abort(); /* the block must describe exactly its bytes */
    if (buf_len) {
        volatile uint8_t sink = buf[0] ^ buf[buf_len - 1];
        (void)sink;
    }
    if (ho->nanswer < sizeof(ho->answer) / sizeof(ho->answer[0])) ho->answer[ho->nanswer++] = stream_id;
    return 0;
}

int txg_h2_on_data(void *user, int32_t stream_id, const uint8_t *data, size_t len) {
    host *ho = user;
    if (len) {
        volatile uint8_t sink = data[0] ^ data[len - 1];
        (void)sink;
    }
    if (ho->turn++ % 3) txg_h2_consume(ho->h, stream_id, len);
    return 0;
}

int txg_h2_on_event(void *user, int kind, int32_t stream_id, uint32_t a, uint32_t b) {
    (void)user;
    (void)kind;
    (void)stream_id;
    (void)a;
    (void)b;
    return 0;
}

ssize_t txg_h2_on_read(void *user, int32_t stream_id, uint8_t *buf, size_t len, uint32_t *flags) {
    host *ho = user;
    unsigned t = ho->turn++;
    size_t n = t % 5 == 2 ? len : (len < 100 ? len : 100); /* sometimes all the windows allow */
    (void)stream_id;
    if (t % 4 == 0) return TXG_H2_DEFERRED;
    memset(buf, 'b', n);
    if (t % 2) *flags |= TXG_H2_READ_EOF;
    if (t % 8 == 3) *flags |= TXG_H2_READ_TRAILERS;
    return (ssize_t)n;
}

static const uint8_t PREFACE[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/* One take of output: whole frames only; DATA payloads are the host's 'b's, padding zero. */
static void check_output(const uint8_t *out, ssize_t n) {
    size_t pos = 0, len;
    if (n < 0) return;
    while (pos < (size_t)n) {
        const uint8_t *f = out + pos;
        if ((size_t)n - pos < 9) abort();
        len = ((size_t)f[0] << 16) | ((size_t)f[1] << 8) | f[2];
        if (len > (size_t)n - pos - 9) abort();
        if (f[3] == 0) { /* DATA */
            size_t i, pad = 0, off = 9;
            if (len > 16384) abort();
            if (f[4] & 0x8) {
                if (len < 1 || (size_t)f[9] + 1 > len) abort();
                pad = f[9];
                off = 10;
            }
            for (i = off; i < 9 + len - pad; i++)
                if (f[i] != 'b') abort();
            for (; i < 9 + len; i++)
                if (f[i] != 0) abort();
        }
        pos += 9 + len;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    txg_h2_limits lim = {8, 4096, 2 * 4096 + 4096, 65535, 1 << 20, 8, 1000, 100};
    static const uint8_t blob[] = ":status200content-length3x-ab";
    static const uint32_t lens[] = {7, 3, 14, 1, 1, 1};
    static const uint8_t tblob[] = "grpc-status0";
    static const uint32_t tlens[] = {11, 1};
    host ho;
    const uint8_t *out;
    ssize_t n;
    int err, rc = 0;
    size_t pos = 0;

    memset(&ho, 0, sizeof(ho));
    ho.h = txg_h2_new(&ho, &lim, &err);
    if (!ho.h) return 0;
    if (size < 24 || memcmp(data, PREFACE, 24) != 0) rc = txg_h2_recv(ho.h, PREFACE, 24);
    while (pos < size && rc == 0) {
        size_t piece = 1 + data[pos] % 64, i;
        if (piece > size - pos) piece = size - pos;
        rc = txg_h2_recv(ho.h, data + pos, piece);
        pos += piece;
        for (i = 0; i < ho.nanswer; i++) {
            int32_t sid = ho.answer[i];
            switch ((unsigned)sid % 5) {
            case 0:
                txg_h2_submit(ho.h, sid, blob, sizeof(blob) - 1, lens, 3, TXG_H2_SUBMIT_END_STREAM);
                break;
            case 1:
                txg_h2_submit(ho.h, sid, blob, sizeof(blob) - 1, lens, 3, 0);
                txg_h2_resume(ho.h, sid);
                break;
            case 2:
                txg_h2_reset(ho.h, sid, 8);
                break;
            case 3:
                txg_h2_submit(ho.h, sid, blob, sizeof(blob) - 1, lens, 3, 0);
                txg_h2_submit(ho.h, sid, tblob, sizeof(tblob) - 1, tlens, 1, TXG_H2_SUBMIT_TRAILERS);
                break;
            default: {
                int32_t w[2];
                txg_h2_send_windows(ho.h, sid, w);
                txg_h2_submit(ho.h, sid, blob, 5, lens, 3, 0); /* lengths beyond the blob: refused */
            }
            }
        }
        ho.nanswer = 0;
        n = txg_h2_send(ho.h, &out);
        check_output(out, n);
        if (piece % 4) txg_h2_release(ho.h);
        if (pos > size / 2 && pos - piece <= size / 2) txg_h2_goaway(ho.h, 0, txg_h2_last_stream_id(ho.h));
    }
    n = txg_h2_send(ho.h, &out);
    check_output(out, n);
    txg_h2_release(ho.h);
    txg_h2_free(ho.h);
    return 0;
}
