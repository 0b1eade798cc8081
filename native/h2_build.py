"""cffi builder (out-of-line, API mode) for ``txgate._nghttp2``, the native HTTP/2 engine's session glue.

setup.py runs it via ``cffi_modules`` next to the SPKI builder; like that module it is optional: without
libnghttp2's headers or a compiler the build is skipped and txgate uses hyper-h2. Linked to the system
libnghttp2 (Debian ``libnghttp2-dev``). Build in place for tests with ``python3 native/h2_build.py``
(run from the project root).
"""
from __future__ import annotations

import os

from cffi import FFI

CDEF = """
#define TXG_H2_E_ARG -2
#define TXG_H2_E_NOMEM -3
#define TXG_H2_E_LIB -5
#define TXG_H2_E_GONE -6
#define TXG_H2_DEFERRED -508
#define TXG_H2_EV_END_STREAM 1
#define TXG_H2_EV_RST_STREAM 2
#define TXG_H2_EV_GOAWAY 3
#define TXG_H2_EV_WINDOW 4
#define TXG_H2_EV_CLOSED 5
#define TXG_H2_READ_EOF 1
#define TXG_H2_READ_TRAILERS 2
#define TXG_H2_SUBMIT_END_STREAM 1
#define TXG_H2_SUBMIT_TRAILERS 2

typedef struct txg_h2_limits {
    uint32_t max_concurrent_streams;
    uint32_t max_header_list_size;
    uint32_t header_decode_limit;
    uint32_t initial_window_size;
    uint32_t connection_window_size;
    uint32_t max_continuations;
    uint32_t max_control_replies;
    uint32_t max_refused_streams;
} txg_h2_limits;

typedef struct txg_h2 txg_h2;

extern "Python+C" int txg_h2_on_request(void *user, int32_t stream_id, const uint8_t *buf, size_t buf_len,
                                        const uint32_t *lens, size_t nfields, int end_stream);
extern "Python+C" int txg_h2_on_data(void *user, int32_t stream_id, const uint8_t *data, size_t len);
extern "Python+C" int txg_h2_on_event(void *user, int kind, int32_t stream_id, uint32_t a, uint32_t b);
extern "Python+C" ssize_t txg_h2_on_read(void *user, int32_t stream_id, uint8_t *buf, size_t len,
                                         uint32_t *flags);

txg_h2 *txg_h2_new(void *user, const txg_h2_limits *limits, int *err);
void txg_h2_free(txg_h2 *h);
int txg_h2_recv(txg_h2 *h, const uint8_t *data, size_t len);
ssize_t txg_h2_send(txg_h2 *h, const uint8_t **out);
void txg_h2_release(txg_h2 *h);
void txg_h2_memory(txg_h2 *h, size_t *glue, size_t *mapped);
int txg_h2_submit(txg_h2 *h, int32_t stream_id, const uint8_t *blob, size_t blob_len,
                  const uint32_t *lens, size_t nfields, int flags);
int txg_h2_resume(txg_h2 *h, int32_t stream_id);
int txg_h2_reset(txg_h2 *h, int32_t stream_id, uint32_t code);
int txg_h2_goaway(txg_h2 *h, uint32_t code, int32_t last_stream_id);
int txg_h2_consume(txg_h2 *h, int32_t stream_id, size_t n);
int txg_h2_send_windows(txg_h2 *h, int32_t stream_id, int32_t *windows);
uint32_t txg_h2_max_frame_size(txg_h2 *h);
int32_t txg_h2_last_stream_id(txg_h2 *h);
int txg_h2_failed(txg_h2 *h);
const char *txg_h2_version(void);
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
# Paths relative to the project root (where setup.py runs), as setuptools wants for sources.
ffibuilder.set_source(
    "txgate._nghttp2",
    '#include "h2glue.h"',
    sources=["native/h2glue.c"],
    include_dirs=["native"],
    libraries=["nghttp2"],
    extra_compile_args=["-O2", "-std=c99", "-Wall", "-Wextra"],
)

if __name__ == "__main__":
    # In-place build for a source checkout: txgate/_nghttp2.*.so beside the package.
    os.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    ffibuilder.compile(tmpdir=".", verbose=False)
