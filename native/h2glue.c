/* txgate HTTP/2 glue over libnghttp2's server session (see h2glue.h).
 *
 * nghttp2 runs with no_http_messaging (txgate validates request heads itself, the same way for both
 * engines) and no_auto_window_update (the connection window is credited as DATA arrives, a stream's
 * only when the host consumes it). What no_http_messaging turns off but hyper-h2 still checks is
 * redone here: content-length digits/conflicts and body length vs content-length (connection
 * PROTOCOL_ERROR), trailers without END_STREAM, and the decoded header list cap (ENHANCE_YOUR_CALM).
 *
 * A stream beyond SETTINGS_MAX_CONCURRENT_STREAMS is refused here with RST_STREAM(REFUSED_STREAM) (RFC 9113
 * 5.1.2 allows a stream error): nghttp2 makes it a connection error once the client has acknowledged the
 * setting, so nghttp2 is given a higher ceiling and the advertised value is written into the SETTINGS frame
 * on the wire; a client that keeps opening refused streams gets GOAWAY(ENHANCE_YOUR_CALM).
 *
 * Memory per idle session (docs/benchmarks.md, idle memory): response DATA never passes through
 * nghttp2's frame buffer (NGHTTP2_DATA_FLAG_NO_COPY: the host copies the payload straight into h->out,
 * send_data() writes the frame header and padding around it); the glue's own buffers (header block,
 * output) are freed whenever they are empty between calls, like OpenSSL's SSL_MODE_RELEASE_BUFFERS; and
 * nghttp2's blocks of BIG_BLOCK bytes and more (its 16 KiB frame buffer) get an anonymous mapping of
 * their own, so that pages it never writes (DATA no longer goes there) are never resident, whatever
 * the heap held before. Each session has its own mappings: nothing nghttp2 owns is shared. */
#define _DEFAULT_SOURCE /* MAP_ANONYMOUS under -std=c99 */
#include "h2glue.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <nghttp2/nghttp2.h>

#define H2_NO_ERROR 0
#define H2_PROTOCOL_ERROR 1
#define H2_INTERNAL_ERROR 2
#define H2_REFUSED_STREAM 7
#define H2_ENHANCE_YOUR_CALM 11

typedef struct txg_stream {
    struct txg_stream *prev, *next;
    int32_t id;
    int64_t expected; /* content-length, -1 when none */
    int64_t actual;
    int refused;
    int counted; /* one of the h->live streams */
} txg_stream;

/* nghttp2 blocks this large get a mapping of their own (see the opening comment); at most BIG_SLOTS
 * at once per session (its frame buffer is one, a header block over 16 KiB adds chunks), beyond that
 * the heap. */
#define BIG_BLOCK 16384
#define BIG_SLOTS 8

struct txg_h2 {
    nghttp2_session *session;
    void *user;
    nghttp2_mem mem;
    void *big[BIG_SLOTS];
    size_t big_len[BIG_SLOTS]; /* the mapping's length (page multiple) */
    txg_h2_limits lim;
    /* the header block being decoded */
    uint8_t *hbuf;
    size_t hlen, hcap;
    uint32_t *hlens;
    size_t nlens, lcap;
    uint64_t hsize;
    /* state */
    txg_stream *streams;
    int fail_code;       /* connection error we decided on, -1 none */
    int failed;          /* GOAWAY(code) queued or sent: the session is over; -1 none */
    int32_t refuse_above; /* after our GOAWAY: new streams above this are refused */
    int goaway_sent;      /* our GOAWAY is on the wire: nghttp2 now ignores streams above it */
    uint32_t live;        /* request streams accepted and not closed */
    uint32_t refused_total; /* streams refused over max_concurrent_streams */
    int settings_patched; /* the advertised max_concurrent_streams is on the wire */
    uint32_t acks_unsent; /* PING/SETTINGS ACKs serialized since the host last took the output */
    /* output */
    uint8_t *out;
    size_t out_len, out_cap;
    /* a DATA payload the host copied to h->out + out_len + 9 (NO_COPY), waiting for send_data() */
    int staged;
    int32_t staged_sid;
    size_t staged_len;
};

/* -- nghttp2's allocator: big blocks in their own mappings ---------------------------------------- */

static int big_slot(txg_h2 *h, const void *p) {
    int i;
    if (!p) return -1;
    for (i = 0; i < BIG_SLOTS; i++)
        if (h->big[i] == p) return i;
    return -1;
}

/* Mappings made here and not yet unmapped, in the whole process. Adjacent ones merge into one kernel
 * VMA, but sessions closing in between leave holes: at worst one VMA each, so they are capped well
 * under vm.max_map_count (65530 by default), which munmap itself needs room under to split a VMA. */
static size_t big_live;
#ifndef TXG_H2_BIG_LIVE_MAX
#define TXG_H2_BIG_LIVE_MAX 32768 /* the fuzz target sets 1: the frame buffer mapped, then the heap */
#endif

/* A new mapping of at least n bytes in a free slot; NULL when no slot is free, the process holds
 * TXG_H2_BIG_LIVE_MAX of them, or mmap fails: the caller then uses the heap. */
static void *big_alloc(txg_h2 *h, size_t n) {
    size_t len;
    void *p;
    int i;
    for (i = 0; i < BIG_SLOTS && h->big[i]; i++)
        ;
    if (i == BIG_SLOTS || n > SIZE_MAX - 4095) return NULL;
    if (__atomic_add_fetch(&big_live, 1, __ATOMIC_RELAXED) > TXG_H2_BIG_LIVE_MAX) {
        __atomic_sub_fetch(&big_live, 1, __ATOMIC_RELAXED);
        return NULL;
    }
    len = (n + 4095) & ~(size_t)4095;
    p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        __atomic_sub_fetch(&big_live, 1, __ATOMIC_RELAXED);
        return NULL;
    }
    h->big[i] = p;
    h->big_len[i] = len;
    return p;
}

/* munmap fails only when splitting a VMA would pass vm.max_map_count: then at least give the pages
 * back (the address range stays reserved). */
static void big_unmap(void *p, size_t len) {
    if (munmap(p, len) != 0) madvise(p, len, MADV_DONTNEED);
    __atomic_sub_fetch(&big_live, 1, __ATOMIC_RELAXED);
}

static void *mem_malloc(size_t n, void *ud) {
    void *p = n >= BIG_BLOCK ? big_alloc(ud, n) : NULL;
    return p ? p : malloc(n);
}

static void mem_free(void *p, void *ud) {
    txg_h2 *h = ud;
    int i = big_slot(h, p);
    if (i < 0) {
        free(p);
        return;
    }
    big_unmap(p, h->big_len[i]);
    h->big[i] = NULL;
    h->big_len[i] = 0;
}

static void *mem_calloc(size_t nmemb, size_t size, void *ud) {
    void *p;
    if (size && nmemb > SIZE_MAX / size) return NULL;
    if (nmemb * size < BIG_BLOCK) return calloc(nmemb, size);
    p = big_alloc(ud, nmemb * size); /* fresh anonymous pages are zero */
    return p ? p : calloc(nmemb, size);
}

static void *mem_realloc(void *p, size_t n, void *ud) {
    txg_h2 *h = ud;
    int i = big_slot(h, p);
    void *q;
    if (!p) return mem_malloc(n, ud);
    if (i < 0) return realloc(p, n); /* a heap block stays on the heap */
    if (n <= h->big_len[i]) return p;
    q = mem_malloc(n, ud);
    if (!q) return NULL;
    memcpy(q, p, h->big_len[i]);
    mem_free(p, ud);
    return q;
}

static int grow(void **buf, size_t *cap, size_t need, size_t unit) {
    size_t ncap;
    void *p;
    if (need <= *cap) return 0;
    ncap = *cap ? *cap : 256;
    while (ncap < need) {
        if (ncap > SIZE_MAX / 2 / unit) return -1;
        ncap *= 2;
    }
    p = realloc(*buf, ncap * unit);
    if (!p) return -1;
    *buf = p;
    *cap = ncap;
    return 0;
}

static void fail(txg_h2 *h, int code) {
    if (h->fail_code < 0) h->fail_code = code;
}

/* What nghttp2 is told: the advertised limit plus room for the streams the glue refuses itself. */
static uint32_t nghttp2_ceiling(const txg_h2_limits *lim) {
    uint64_t v = (uint64_t)lim->max_concurrent_streams + lim->max_refused_streams + 16;
    return v > 0x7fffffffu ? 0x7fffffffu : (uint32_t)v;
}

static txg_stream *stream_of(txg_h2 *h, int32_t sid) {
    return (txg_stream *)nghttp2_session_get_stream_user_data(h->session, sid);
}

static void stream_unlink(txg_h2 *h, txg_stream *st) {
    if (st->prev) st->prev->next = st->next;
    else h->streams = st->next;
    if (st->next) st->next->prev = st->prev;
    free(st);
}

static int is_digits(const uint8_t *v, size_t n) {
    size_t i;
    if (n == 0) return 0;
    for (i = 0; i < n; i++)
        if (v[i] < '0' || v[i] > '9') return 0;
    return 1;
}

static int64_t parse_digits(const uint8_t *v, size_t n) {
    int64_t x = 0;
    size_t i;
    for (i = 0; i < n; i++) {
        if (x > (INT64_MAX - 9) / 10) return INT64_MAX; /* saturate: no body ever gets that long */
        x = x * 10 + (v[i] - '0');
    }
    return x;
}

/* Content-length fields of the gathered block: all digits, and all equal. Returns 0, -1 when bad. */
static int scan_content_length(txg_h2 *h, int64_t *expected) {
    size_t i, off = 0;
    int64_t cl = -1;
    *expected = -1;
    if (!h->hbuf) return 0; /* only empty names and values so far: no content-length */
    for (i = 0; i + 1 < h->nlens; i += 2) {
        size_t nl = h->hlens[i], vl = h->hlens[i + 1];
        const uint8_t *name = h->hbuf + off, *value = h->hbuf + off + nl;
        off += nl + vl;
        if (nl == 14 && memcmp(name, "content-length", 14) == 0) {
            int64_t v;
            if (!is_digits(value, vl)) return -1;
            v = parse_digits(value, vl);
            if (cl >= 0 && v != cl) return -1;
            cl = v;
        }
    }
    *expected = cl;
    return 0;
}

static int on_begin_headers(nghttp2_session *s, const nghttp2_frame *frame, void *ud) {
    txg_h2 *h = ud;
    (void)s;
    if (frame->hd.type != NGHTTP2_HEADERS) return 0;
    h->hlen = h->nlens = 0;
    h->hsize = 0;
    if (frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
        txg_stream *st = calloc(1, sizeof(*st));
        if (!st) {
            fail(h, H2_INTERNAL_ERROR);
            return NGHTTP2_ERR_CALLBACK_FAILURE;
        }
        st->id = frame->hd.stream_id;
        st->expected = -1;
        st->next = h->streams;
        if (h->streams) h->streams->prev = st;
        h->streams = st;
        if (nghttp2_session_set_stream_user_data(h->session, st->id, st) != 0) {
            stream_unlink(h, st);
            fail(h, H2_INTERNAL_ERROR);
            return NGHTTP2_ERR_CALLBACK_FAILURE;
        }
        if (st->id > h->refuse_above && !h->goaway_sent) {
            st->refused = 1;
            nghttp2_submit_rst_stream(h->session, NGHTTP2_FLAG_NONE, st->id, H2_REFUSED_STREAM);
        } else if (h->live >= h->lim.max_concurrent_streams) {
            st->refused = 1;
            if (++h->refused_total > h->lim.max_refused_streams) {
                fail(h, H2_ENHANCE_YOUR_CALM);
                return NGHTTP2_ERR_CALLBACK_FAILURE;
            }
            nghttp2_submit_rst_stream(h->session, NGHTTP2_FLAG_NONE, st->id, H2_REFUSED_STREAM);
        } else {
            st->counted = 1;
            h->live++;
        }
    }
    return 0;
}

/* After our GOAWAY is sent nghttp2 drops new streams above it silently (and will not send RST_STREAM
 * on a stream it never opened): queue RST_STREAM(REFUSED_STREAM) on the wire ourselves. */
static int on_begin_frame(nghttp2_session *s, const nghttp2_frame_hd *hd, void *ud) {
    txg_h2 *h = ud;
    uint8_t f[13] = {0, 0, 4, NGHTTP2_RST_STREAM, 0, 0, 0, 0, 0, 0, 0, 0, H2_REFUSED_STREAM};
    /* Only CONTINUATION may follow an unfinished header block: any other frame means none is being
     * gathered (one nghttp2 dropped half-way leaves nothing to keep), so the buffers may be released. */
    if (hd->type != NGHTTP2_CONTINUATION) h->hlen = h->nlens = 0;
    if (hd->type != NGHTTP2_HEADERS || !h->goaway_sent || hd->stream_id <= h->refuse_above ||
        !(hd->stream_id & 1) || nghttp2_session_find_stream(s, hd->stream_id))
        return 0;
    f[5] = (uint8_t)((uint32_t)hd->stream_id >> 24);
    f[6] = (uint8_t)((uint32_t)hd->stream_id >> 16);
    f[7] = (uint8_t)((uint32_t)hd->stream_id >> 8);
    f[8] = (uint8_t)hd->stream_id;
    if (h->out_len > SIZE_MAX - sizeof(f) || grow((void **)&h->out, &h->out_cap, h->out_len + sizeof(f), 1) != 0) {
        fail(h, H2_INTERNAL_ERROR);
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    memcpy(h->out + h->out_len, f, sizeof(f));
    h->out_len += sizeof(f);
    return 0;
}

static int on_header(nghttp2_session *s, const nghttp2_frame *frame, const uint8_t *name, size_t namelen,
                     const uint8_t *value, size_t valuelen, uint8_t flags, void *ud) {
    txg_h2 *h = ud;
    (void)s;
    (void)flags;
    if (frame->hd.type != NGHTTP2_HEADERS) return 0;
    h->hsize += (uint64_t)namelen + valuelen + 32;
    if (h->hsize > h->lim.header_decode_limit || namelen > UINT32_MAX || valuelen > UINT32_MAX) {
        fail(h, H2_ENHANCE_YOUR_CALM);
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    /* hsize bounds hlen + namelen + valuelen, so neither sum below can overflow. */
    if (grow((void **)&h->hbuf, &h->hcap, h->hlen + namelen + valuelen, 1) != 0 ||
        grow((void **)&h->hlens, &h->lcap, h->nlens + 2, sizeof(uint32_t)) != 0) {
        fail(h, H2_INTERNAL_ERROR);
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    if (namelen) memcpy(h->hbuf + h->hlen, name, namelen);
    if (valuelen) memcpy(h->hbuf + h->hlen + namelen, value, valuelen);
    h->hlen += namelen + valuelen;
    h->hlens[h->nlens++] = (uint32_t)namelen;
    h->hlens[h->nlens++] = (uint32_t)valuelen;
    return 0;
}

static int end_stream(txg_h2 *h, int32_t sid, txg_stream *st) {
    if (st && st->expected >= 0 && st->actual != st->expected) {
        fail(h, H2_PROTOCOL_ERROR);
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    if (st && st->refused) return 0;
    if (txg_h2_on_event(h->user, TXG_H2_EV_END_STREAM, sid, 0, 0) != 0) {
        fail(h, H2_INTERNAL_ERROR);
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    return 0;
}

static int on_frame_recv(nghttp2_session *s, const nghttp2_frame *frame, void *ud) {
    txg_h2 *h = ud;
    int32_t sid = frame->hd.stream_id;
    int es = (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
    int rv = 0;
    (void)s;
    switch (frame->hd.type) {
    case NGHTTP2_HEADERS: {
        txg_stream *st = stream_of(h, sid);
        int64_t expected;
        if (scan_content_length(h, &expected) != 0) {
            fail(h, H2_PROTOCOL_ERROR);
            return NGHTTP2_ERR_CALLBACK_FAILURE;
        }
        if (frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
            if (st) st->expected = expected;
            if (st && st->refused) {
                h->hlen = h->nlens = 0;
                return 0;
            }
            rv = txg_h2_on_request(h->user, sid, h->hbuf, h->hlen, h->hlens, h->nlens / 2, es);
            h->hlen = h->nlens = 0;
            if (rv != 0) {
                fail(h, H2_INTERNAL_ERROR);
                return NGHTTP2_ERR_CALLBACK_FAILURE;
            }
            return 0;
        }
        /* Trailers: the body is over; they must end the stream. */
        h->hlen = h->nlens = 0;
        if (!es) {
            fail(h, H2_PROTOCOL_ERROR);
            return NGHTTP2_ERR_CALLBACK_FAILURE;
        }
        if (st) st->expected = -1; /* hyper-h2 re-reads content-length here and checks no more DATA */
        return end_stream(h, sid, st);
    }
    case NGHTTP2_DATA:
        return es ? end_stream(h, sid, stream_of(h, sid)) : 0;
    case NGHTTP2_RST_STREAM: {
        txg_stream *st = stream_of(h, sid);
        if (st && st->refused) return 0;
        rv = txg_h2_on_event(h->user, TXG_H2_EV_RST_STREAM, sid, frame->rst_stream.error_code, 0);
        break;
    }
    case NGHTTP2_GOAWAY:
        rv = txg_h2_on_event(h->user, TXG_H2_EV_GOAWAY, 0, frame->goaway.error_code,
                             (uint32_t)frame->goaway.last_stream_id);
        break;
    case NGHTTP2_WINDOW_UPDATE:
        rv = txg_h2_on_event(h->user, TXG_H2_EV_WINDOW, sid, 0, 0);
        break;
    case NGHTTP2_SETTINGS:
        if (!(frame->hd.flags & NGHTTP2_FLAG_ACK)) rv = txg_h2_on_event(h->user, TXG_H2_EV_WINDOW, 0, 0, 0);
        break;
    default:
        break;
    }
    if (rv != 0) {
        fail(h, H2_INTERNAL_ERROR);
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    return 0;
}

static int on_data_chunk(nghttp2_session *s, uint8_t flags, int32_t sid, const uint8_t *data, size_t len,
                         void *ud) {
    txg_h2 *h = ud;
    txg_stream *st = stream_of(h, sid);
    (void)flags;
    /* The connection window is never held for one stream's sake. */
    if (nghttp2_session_consume_connection(s, len) != 0) {
        fail(h, H2_INTERNAL_ERROR);
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    if (st) {
        st->actual += (int64_t)len;
        if (st->expected >= 0 && st->actual > st->expected) {
            fail(h, H2_PROTOCOL_ERROR);
            return NGHTTP2_ERR_CALLBACK_FAILURE;
        }
    }
    if (!st || st->refused) {
        nghttp2_session_consume_stream(s, sid, len);
        return 0;
    }
    if (txg_h2_on_data(h->user, sid, data, len) != 0) {
        fail(h, H2_INTERNAL_ERROR);
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    return 0;
}

static int on_stream_close(nghttp2_session *s, int32_t sid, uint32_t code, void *ud) {
    txg_h2 *h = ud;
    txg_stream *st = stream_of(h, sid);
    int refused = st ? st->refused : 0;
    if (st) {
        if (st->counted) h->live--;
        nghttp2_session_set_stream_user_data(s, sid, NULL);
        stream_unlink(h, st);
    }
    if (refused) return 0;
    if (txg_h2_on_event(h->user, TXG_H2_EV_CLOSED, sid, code, 0) != 0) {
        fail(h, H2_INTERNAL_ERROR);
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    return 0;
}

static int on_frame_send(nghttp2_session *s, const nghttp2_frame *frame, void *ud) {
    txg_h2 *h = ud;
    if ((frame->hd.type == NGHTTP2_PING || frame->hd.type == NGHTTP2_SETTINGS) && (frame->hd.flags & NGHTTP2_FLAG_ACK)) {
        /* A peer that does not read is not read either, and its replies wait in h->out: bound them. */
        if (++h->acks_unsent > h->lim.max_control_replies && h->failed < 0) {
            nghttp2_session_terminate_session(s, H2_ENHANCE_YOUR_CALM);
            h->failed = H2_ENHANCE_YOUR_CALM;
        }
        return 0;
    }
    if (frame->hd.type != NGHTTP2_GOAWAY) return 0;
    h->goaway_sent = 1;
    if (frame->goaway.error_code != H2_NO_ERROR && h->failed < 0) h->failed = (int)frame->goaway.error_code;
    return 0;
}

/* nghttp2 asks for up to `length` payload bytes of a DATA frame: the host copies them straight into
 * h->out, 9 bytes past its end (room for the frame header), and nghttp2 is told NO_COPY: send_data()
 * then completes the frame there. nghttp2 calls send_data() right after this, within the same
 * nghttp2_session_mem_send() (or drops the frame when the stream is gone); nothing else writes to
 * h->out in between. */
static ssize_t read_body(nghttp2_session *s, int32_t sid, uint8_t *buf, size_t length, uint32_t *data_flags,
                         nghttp2_data_source *source, void *ud) {
    txg_h2 *h = ud;
    uint32_t flags = 0;
    ssize_t n;
    (void)s;
    (void)buf;
    (void)source;
    h->staged = 0;
    if (length > SIZE_MAX - 9 - h->out_len ||
        grow((void **)&h->out, &h->out_cap, h->out_len + 9 + length, 1) != 0) {
        fail(h, H2_INTERNAL_ERROR);
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    n = txg_h2_on_read(h->user, sid, h->out + h->out_len + 9, length, &flags);
    if (n == TXG_H2_DEFERRED) return NGHTTP2_ERR_DEFERRED;
    if (n < 0 || (size_t)n > length) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    if (flags & TXG_H2_READ_EOF) {
        *data_flags |= NGHTTP2_DATA_FLAG_EOF;
        if (flags & TXG_H2_READ_TRAILERS) *data_flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
    }
    *data_flags |= NGHTTP2_DATA_FLAG_NO_COPY;
    h->staged = 1;
    h->staged_sid = sid;
    h->staged_len = (size_t)n;
    return n;
}

/* The DATA frame read_body() staged: header, pad length, payload (already in place), padding, per
 * nghttp2_send_data_callback's contract. */
static int send_data(nghttp2_session *s, nghttp2_frame *frame, const uint8_t *framehd, size_t length,
                     nghttp2_data_source *source, void *ud) {
    txg_h2 *h = ud;
    size_t pad = frame->data.padlen, total;
    uint8_t *dst;
    (void)s;
    (void)source;
    if (!h->staged || h->staged_sid != frame->hd.stream_id || h->staged_len != length || pad > 256) {
        fail(h, H2_INTERNAL_ERROR);
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    h->staged = 0;
    total = 9 + length + pad; /* cannot overflow: read_body() grew h->out to out_len + 9 + length */
    if (grow((void **)&h->out, &h->out_cap, h->out_len + total, 1) != 0) {
        fail(h, H2_INTERNAL_ERROR);
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    dst = h->out + h->out_len;
    if (pad) {
        if (length) memmove(dst + 10, dst + 9, length);
        dst[9] = (uint8_t)(pad - 1);
        if (pad > 1) memset(dst + 10 + length, 0, pad - 1);
    }
    memcpy(dst, framehd, 9);
    h->out_len += total;
    return 0;
}

#ifdef TXG_H2_TEST_PADDING
/* Test builds (the fuzz target) pad DATA frames too, to run send_data()'s padding path. */
static ssize_t select_padding(nghttp2_session *s, const nghttp2_frame *frame, size_t max_payloadlen, void *ud) {
    size_t want = frame->hd.length + (frame->hd.length % 3 == 0 ? 0 : 1 + frame->hd.length % 7);
    (void)s;
    (void)ud;
    if (frame->hd.type != NGHTTP2_DATA) return (ssize_t)frame->hd.length;
    return (ssize_t)(want < max_payloadlen ? want : max_payloadlen);
}
#endif

txg_h2 *txg_h2_new(void *user, const txg_h2_limits *limits, int *err) {
    nghttp2_session_callbacks *cbs = NULL;
    nghttp2_option *opt = NULL;
    nghttp2_settings_entry iv[4];
    txg_h2 *h;
    int rv;

    *err = 0;
    if (!limits || limits->initial_window_size > NGHTTP2_MAX_WINDOW_SIZE ||
        limits->connection_window_size > NGHTTP2_MAX_WINDOW_SIZE ||
        limits->connection_window_size < NGHTTP2_INITIAL_CONNECTION_WINDOW_SIZE) {
        *err = TXG_H2_E_ARG;
        return NULL;
    }
    h = calloc(1, sizeof(*h));
    if (!h) {
        *err = TXG_H2_E_NOMEM;
        return NULL;
    }
    h->user = user;
    h->lim = *limits;
    h->fail_code = -1;
    h->failed = -1;
    h->refuse_above = INT32_MAX;

    if (nghttp2_session_callbacks_new(&cbs) != 0 || nghttp2_option_new(&opt) != 0) goto nomem;
    nghttp2_session_callbacks_set_on_begin_frame_callback(cbs, on_begin_frame);
    nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data_chunk);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close);
    nghttp2_session_callbacks_set_on_frame_send_callback(cbs, on_frame_send);
    nghttp2_session_callbacks_set_send_data_callback(cbs, send_data);
#ifdef TXG_H2_TEST_PADDING
    nghttp2_session_callbacks_set_select_padding_callback(cbs, select_padding);
#endif
    nghttp2_option_set_no_http_messaging(opt, 1);
    nghttp2_option_set_no_auto_window_update(opt, 1);
    nghttp2_option_set_no_closed_streams(opt, 1);
    nghttp2_option_set_max_continuations(opt, limits->max_continuations);
    nghttp2_option_set_max_outbound_ack(opt, limits->max_control_replies ? limits->max_control_replies : 1000);
    h->mem.mem_user_data = h;
    h->mem.malloc = mem_malloc;
    h->mem.free = mem_free;
    h->mem.calloc = mem_calloc;
    h->mem.realloc = mem_realloc;
    rv = nghttp2_session_server_new3(&h->session, cbs, h, opt, &h->mem);
    nghttp2_session_callbacks_del(cbs);
    nghttp2_option_del(opt);
    cbs = NULL;
    opt = NULL;
    if (rv != 0) goto nomem;

    iv[0].settings_id = NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS;
    iv[0].value = nghttp2_ceiling(limits); /* the wire says limits->max_concurrent_streams */
    iv[1].settings_id = NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE;
    iv[1].value = limits->max_header_list_size;
    iv[2].settings_id = NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE;
    iv[2].value = limits->initial_window_size;
    if (nghttp2_submit_settings(h->session, NGHTTP2_FLAG_NONE, iv, 3) != 0 ||
        nghttp2_session_set_local_window_size(h->session, NGHTTP2_FLAG_NONE, 0,
                                              (int32_t)limits->connection_window_size) != 0) {
        *err = TXG_H2_E_LIB;
        txg_h2_free(h);
        return NULL;
    }
    return h;
nomem:
    if (cbs) nghttp2_session_callbacks_del(cbs);
    if (opt) nghttp2_option_del(opt);
    free(h);
    *err = TXG_H2_E_NOMEM;
    return NULL;
}

void txg_h2_free(txg_h2 *h) {
    int i;
    if (!h) return;
    if (h->session) nghttp2_session_del(h->session);
    for (i = 0; i < BIG_SLOTS; i++) /* nghttp2 freed them all; never leak a mapping regardless */
        if (h->big[i]) big_unmap(h->big[i], h->big_len[i]);
    while (h->streams) {
        txg_stream *next = h->streams->next;
        free(h->streams);
        h->streams = next;
    }
    free(h->hbuf);
    free(h->hlens);
    free(h->out);
    free(h);
}

/* Write the advertised max_concurrent_streams into our first SETTINGS frame (at the start of buf). */
static void patch_settings(txg_h2 *h, uint8_t *buf, size_t n) {
    size_t len, off;
    h->settings_patched = 1;
    if (n < 9 || buf[3] != NGHTTP2_SETTINGS || (buf[4] & NGHTTP2_FLAG_ACK)) return;
    len = ((size_t)buf[0] << 16) | ((size_t)buf[1] << 8) | buf[2];
    if (len > n - 9) return;
    for (off = 9; off + 6 <= 9 + len; off += 6) {
        if (buf[off] == 0 && buf[off + 1] == NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS) {
            uint32_t v = h->lim.max_concurrent_streams;
            buf[off + 2] = (uint8_t)(v >> 24);
            buf[off + 3] = (uint8_t)(v >> 16);
            buf[off + 4] = (uint8_t)(v >> 8);
            buf[off + 5] = (uint8_t)v;
        }
    }
}

static int lib_error_code(ssize_t rv) {
    switch (rv) {
    case NGHTTP2_ERR_FLOODED:
        return H2_ENHANCE_YOUR_CALM;
    case NGHTTP2_ERR_BAD_CLIENT_MAGIC:
    case NGHTTP2_ERR_TOO_MANY_CONTINUATIONS:
        return H2_PROTOCOL_ERROR;
    default:
        return H2_INTERNAL_ERROR;
    }
}

/* Append every frame nghttp2 has ready to h->out. */
static int pump(txg_h2 *h) {
    for (;;) {
        const uint8_t *data;
        ssize_t n = nghttp2_session_mem_send(h->session, &data);
        if (n < 0) return (int)n;
        if (n == 0) return 0;
        if (h->out_len > SIZE_MAX - (size_t)n || grow((void **)&h->out, &h->out_cap, h->out_len + (size_t)n, 1) != 0)
            return TXG_H2_E_NOMEM;
        memcpy(h->out + h->out_len, data, (size_t)n);
        if (!h->settings_patched) patch_settings(h, h->out + h->out_len, (size_t)n);
        h->out_len += (size_t)n;
    }
}

/* The header-block buffers hold nothing between blocks: free them (a block spanning two calls keeps them). */
static void release_block(txg_h2 *h) {
    if (h->hlen || h->nlens) return;
    free(h->hbuf);
    free(h->hlens);
    h->hbuf = NULL;
    h->hlens = NULL;
    h->hcap = h->lcap = 0;
}

void txg_h2_release(txg_h2 *h) {
    if (!h) return;
    release_block(h);
    if (h->out_len == 0) {
        free(h->out);
        h->out = NULL;
        h->out_cap = 0;
    }
}

void txg_h2_memory(txg_h2 *h, size_t *glue, size_t *mapped) {
    int i;
    *glue = *mapped = 0;
    if (!h) return;
    *glue = h->hcap + h->lcap * sizeof(uint32_t) + h->out_cap;
    for (i = 0; i < BIG_SLOTS; i++) *mapped += h->big_len[i];
}

int txg_h2_recv(txg_h2 *h, const uint8_t *data, size_t len) {
    ssize_t rv;
    if (!h || (!data && len)) return H2_INTERNAL_ERROR;
    if (h->failed >= 0) return h->failed;
    rv = nghttp2_session_mem_recv(h->session, data, len);
    if (rv < 0) {
        int code = h->fail_code >= 0 ? h->fail_code : lib_error_code(rv);
        nghttp2_session_terminate_session(h->session, (uint32_t)code);
        h->failed = code;
    }
    if (pump(h) != 0 && h->failed < 0) h->failed = H2_INTERNAL_ERROR;
    release_block(h);
    return h->failed >= 0 ? h->failed : 0;
}

ssize_t txg_h2_send(txg_h2 *h, const uint8_t **out) {
    if (!h || !out) return TXG_H2_E_ARG;
    if (pump(h) != 0 && h->failed < 0) h->failed = H2_INTERNAL_ERROR;
    h->acks_unsent = 0;
    *out = h->out;
    {
        ssize_t n = (ssize_t)h->out_len;
        h->out_len = 0;
        return n;
    }
}

/* The stream exists, we have not ended or reset it, and the session goes on. */
static int sendable(txg_h2 *h, int32_t stream_id) {
    nghttp2_stream *st = nghttp2_session_find_stream(h->session, stream_id);
    txg_stream *rec;
    if (!st || h->failed >= 0) return 0;
    rec = stream_of(h, stream_id);
    if (rec && rec->refused) return 0;
    switch (nghttp2_stream_get_state(st)) {
    case NGHTTP2_STREAM_STATE_OPEN:
    case NGHTTP2_STREAM_STATE_HALF_CLOSED_REMOTE:
        return 1;
    default:
        return 0;
    }
}

int txg_h2_submit(txg_h2 *h, int32_t stream_id, const uint8_t *blob, size_t blob_len, const uint32_t *lens,
                  size_t nfields, int flags) {
    nghttp2_nv stack_nva[24];
    nghttp2_nv *nva = stack_nva;
    nghttp2_data_provider prd;
    size_t i, off = 0;
    int rv;

    if (!h || stream_id <= 0 || (nfields && (!blob || !lens)) || nfields > SIZE_MAX / 2 / sizeof(nghttp2_nv))
        return TXG_H2_E_ARG;
    if (!sendable(h, stream_id)) return TXG_H2_E_GONE;
    if (nfields > sizeof(stack_nva) / sizeof(stack_nva[0])) {
        nva = malloc(nfields * sizeof(nghttp2_nv));
        if (!nva) return TXG_H2_E_NOMEM;
    }
    for (i = 0; i < nfields; i++) {
        size_t nl = lens[2 * i], vl = lens[2 * i + 1];
        if (nl > blob_len - off || vl > blob_len - off - nl) {
            if (nva != stack_nva) free(nva);
            return TXG_H2_E_ARG;
        }
        nva[i].name = (uint8_t *)(blob + off);
        nva[i].namelen = nl;
        nva[i].value = (uint8_t *)(blob + off + nl);
        nva[i].valuelen = vl;
        nva[i].flags = NGHTTP2_NV_FLAG_NONE;
        off += nl + vl;
    }
    if (flags & TXG_H2_SUBMIT_TRAILERS) {
        rv = nghttp2_submit_trailer(h->session, stream_id, nva, nfields);
    } else if (flags & TXG_H2_SUBMIT_END_STREAM) {
        rv = nghttp2_submit_response(h->session, stream_id, nva, nfields, NULL);
    } else {
        memset(&prd, 0, sizeof(prd));
        prd.read_callback = read_body;
        rv = nghttp2_submit_response(h->session, stream_id, nva, nfields, &prd);
    }
    if (nva != stack_nva) free(nva);
    return rv;
}

int txg_h2_resume(txg_h2 *h, int32_t stream_id) {
    if (!h || stream_id <= 0) return TXG_H2_E_ARG;
    return nghttp2_session_resume_data(h->session, stream_id);
}

int txg_h2_reset(txg_h2 *h, int32_t stream_id, uint32_t code) {
    if (!h || stream_id <= 0) return TXG_H2_E_ARG;
    return nghttp2_submit_rst_stream(h->session, NGHTTP2_FLAG_NONE, stream_id, code);
}

int txg_h2_goaway(txg_h2 *h, uint32_t code, int32_t last_stream_id) {
    int rv;
    if (!h || last_stream_id < 0) return TXG_H2_E_ARG;
    if (h->failed >= 0) return 0;
    rv = nghttp2_submit_goaway(h->session, NGHTTP2_FLAG_NONE, last_stream_id, code, NULL, 0);
    if (rv == 0) {
        if (last_stream_id < h->refuse_above) h->refuse_above = last_stream_id;
        if (code != H2_NO_ERROR) h->failed = (int)code;
    }
    return rv;
}

int txg_h2_consume(txg_h2 *h, int32_t stream_id, size_t n) {
    if (!h || stream_id <= 0) return TXG_H2_E_ARG;
    if (!nghttp2_session_find_stream(h->session, stream_id)) return 0;
    return nghttp2_session_consume_stream(h->session, stream_id, n);
}

int txg_h2_send_windows(txg_h2 *h, int32_t stream_id, int32_t *windows) {
    if (!h || stream_id <= 0 || !windows) return -1;
    windows[0] = windows[1] = 0;
    if (!sendable(h, stream_id)) return -1;
    windows[0] = nghttp2_session_get_stream_remote_window_size(h->session, stream_id);
    windows[1] = nghttp2_session_get_remote_window_size(h->session);
    return 0;
}

uint32_t txg_h2_max_frame_size(txg_h2 *h) {
    return h ? nghttp2_session_get_remote_settings(h->session, NGHTTP2_SETTINGS_MAX_FRAME_SIZE) : 16384;
}

int32_t txg_h2_last_stream_id(txg_h2 *h) {
    return h ? nghttp2_session_get_last_proc_stream_id(h->session) : 0;
}

int txg_h2_failed(txg_h2 *h) {
    return h ? h->failed : -1;
}

const char *txg_h2_version(void) {
    nghttp2_info *info = nghttp2_version(0);
    return info ? info->version_str : "unknown";
}
