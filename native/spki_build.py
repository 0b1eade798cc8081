"""cffi builder (out-of-line, API mode) for ``txgate._spki``: setup.py runs it via ``cffi_modules``.

Build in place with ``pip install -e . --config-settings editable_mode=compat`` (tests/run.sh does);
``pip install .`` builds it into the installed package.
"""
from __future__ import annotations

from cffi import FFI

CDEF = """
#define TXG_DIGEST_LEN 32
#define TXG_NO_MATCH -1
#define TXG_E_ARG -2
#define TXG_E_NOMEM -3
#define TXG_E_CRYPTO -4
#define TXG_E_MALFORMED -10
#define TXG_E_TRUNCATED -10
#define TXG_E_INDEFINITE -11
#define TXG_E_NONMINIMAL -12
#define TXG_E_LENGTH -13
#define TXG_E_TAG -14
#define TXG_E_TRAILING -15
#define TXG_E_EMPTY -16

typedef struct txg_pinset txg_pinset;

int txg_spki_locate(const unsigned char *der, size_t der_len, size_t *spki_off, size_t *spki_len);
int txg_spki_sha256(const unsigned char *der, size_t der_len, unsigned char *out);
txg_pinset *txg_pinset_new(const unsigned char *digests, size_t count, int *err);
void txg_pinset_free(txg_pinset *set);
size_t txg_pinset_len(const txg_pinset *set);
int txg_pinset_contains(const txg_pinset *set, const unsigned char *digest);
int txg_chain_first_match(const txg_pinset *set, const unsigned char *buf, size_t buf_len,
                          const size_t *lens, size_t count, size_t *bad_index);
int txg_chain_first_match4(const txg_pinset *set, const unsigned char *buf, size_t buf_len,
                           size_t count, size_t len0, size_t len1, size_t len2, size_t len3);
const char *txg_openssl_version(void);
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
# Paths relative to the project root (where setup.py runs), as setuptools wants for sources.
ffibuilder.set_source(
    "txgate._spki",
    '#include "spki.h"',
    sources=["native/spki.c"],
    include_dirs=["native"],
    libraries=["crypto"],
    extra_compile_args=["-O2", "-std=c99", "-Wall", "-Wextra"],
)
