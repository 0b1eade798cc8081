/* libFuzzer target for native/h2glue.c: the input is a client byte stream (the preface is prepended
 * when missing), fed in pieces whose sizes come from the input itself. The host callbacks check that
 * every header block the glue hands over is self-consistent, answer requests (with and without bodies,
 * deferred, with trailers), consume body bytes and reset some streams, so both directions run. */
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
    size_t n = len < 100 ? len : 100;
    unsigned t = ho->turn++;
    (void)stream_id;
    if (t % 4 == 0) return TXG_H2_DEFERRED;
    memset(buf, 'b', n);
    if (t % 2) *flags |= TXG_H2_READ_EOF;
    if (t % 8 == 3) *flags |= TXG_H2_READ_TRAILERS;
    return (ssize_t)n;
}

static const uint8_t PREFACE[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    txg_h2_limits lim = {8, 4096, 2 * 4096 + 4096, 65535, 1 << 20, 8, 1000, 100};
    static const uint8_t blob[] = ":status200content-length3x-ab";
    static const uint32_t lens[] = {7, 3, 14, 1, 1, 1};
    static const uint8_t tblob[] = "grpc-status0";
    static const uint32_t tlens[] = {11, 1};
    host ho;
    const uint8_t *out;
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
        txg_h2_send(ho.h, &out);
        if (pos > size / 2 && pos - piece <= size / 2) txg_h2_goaway(ho.h, 0, txg_h2_last_stream_id(ho.h));
    }
    txg_h2_send(ho.h, &out);
    txg_h2_free(ho.h);
    return 0;
}
