/* txgate HTTP/2 glue: a server-side libnghttp2 session whose request header blocks are gathered in C
 * and handed to the host once per request. The host (Python via cffi extern "Python+C", or the fuzz
 * target) implements the four txg_h2_on_* callbacks. Every length crossing this boundary is checked. */
#ifndef TXG_H2GLUE_H
#define TXG_H2GLUE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define TXG_H2_E_ARG -2
#define TXG_H2_E_NOMEM -3
#define TXG_H2_E_LIB -5
#define TXG_H2_E_GONE -6
#define TXG_H2_DEFERRED -508 /* == NGHTTP2_ERR_DEFERRED */

/* txg_h2_on_event kinds */
#define TXG_H2_EV_END_STREAM 1 /* a = 0 */
#define TXG_H2_EV_RST_STREAM 2 /* a = error code received */
#define TXG_H2_EV_GOAWAY 3     /* a = error code, b = last stream id */
#define TXG_H2_EV_WINDOW 4     /* stream 0: connection window or SETTINGS changed */
#define TXG_H2_EV_CLOSED 5     /* a = error code the stream closed with */

/* txg_h2_on_read flags (out) */
#define TXG_H2_READ_EOF 1
#define TXG_H2_READ_TRAILERS 2

/* txg_h2_submit flags */
#define TXG_H2_SUBMIT_END_STREAM 1
#define TXG_H2_SUBMIT_TRAILERS 2

typedef struct txg_h2_limits {
    uint32_t max_concurrent_streams;
    uint32_t max_header_list_size;   /* advertised in SETTINGS */
    uint32_t header_decode_limit;    /* hard cap, HPACK-counted (name + value + 32 per field) */
    uint32_t initial_window_size;    /* per-stream receive window */
    uint32_t connection_window_size; /* connection receive window */
    uint32_t max_continuations;      /* CONTINUATION frames allowed after one HEADERS */
    uint32_t max_control_replies;    /* PING/SETTINGS ACKs not yet taken by txg_h2_send before GOAWAY(ENHANCE_YOUR_CALM) */
    uint32_t max_refused_streams;    /* streams refused over max_concurrent_streams before GOAWAY(ENHANCE_YOUR_CALM) */
} txg_h2_limits;

typedef struct txg_h2 txg_h2;

/* Host callbacks. Non-zero (or negative for on_read) = the host failed: the connection is torn down. */
int txg_h2_on_request(void *user, int32_t stream_id, const uint8_t *buf, size_t buf_len,
                      const uint32_t *lens, size_t nfields, int end_stream);
int txg_h2_on_data(void *user, int32_t stream_id, const uint8_t *data, size_t len);
int txg_h2_on_event(void *user, int kind, int32_t stream_id, uint32_t a, uint32_t b);
ssize_t txg_h2_on_read(void *user, int32_t stream_id, uint8_t *buf, size_t len, uint32_t *flags);

txg_h2 *txg_h2_new(void *user, const txg_h2_limits *limits, int *err);
void txg_h2_free(txg_h2 *h);
/* Feed bytes. 0 = fine; > 0 = connection error, a GOAWAY with that code is queued; the session is over. */
int txg_h2_recv(txg_h2 *h, const uint8_t *data, size_t len);
/* Serialize every pending frame; *out points at them (valid until the next call), returns the length. */
ssize_t txg_h2_send(txg_h2 *h, const uint8_t **out);
/* The host has copied what txg_h2_send gave it: free the glue's empty buffers (an idle session then
 * holds none; they are allocated again when needed). *out from txg_h2_send is invalid afterwards. */
void txg_h2_release(txg_h2 *h);
/* What the session holds beyond nghttp2's heap: the glue's buffers, and the mappings of nghttp2's big
 * blocks (page multiples; pages never written are not resident). */
void txg_h2_memory(txg_h2 *h, size_t *glue, size_t *mapped);
/* Response HEADERS (or trailers) from one blob of name/value bytes and 2 * nfields lengths. */
int txg_h2_submit(txg_h2 *h, int32_t stream_id, const uint8_t *blob, size_t blob_len,
                  const uint32_t *lens, size_t nfields, int flags);
int txg_h2_resume(txg_h2 *h, int32_t stream_id);
int txg_h2_reset(txg_h2 *h, int32_t stream_id, uint32_t code);
int txg_h2_goaway(txg_h2 *h, uint32_t code, int32_t last_stream_id);
int txg_h2_consume(txg_h2 *h, int32_t stream_id, size_t n);
/* The stream's and the connection's send windows; -1 when the stream is gone or cannot send. */
int txg_h2_send_windows(txg_h2 *h, int32_t stream_id, int32_t *windows);
uint32_t txg_h2_max_frame_size(txg_h2 *h);
int32_t txg_h2_last_stream_id(txg_h2 *h);
int txg_h2_failed(txg_h2 *h);
const char *txg_h2_version(void);

#endif
