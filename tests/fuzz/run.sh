#!/usr/bin/env bash
# Build a fuzz target with libFuzzer + ASan + UBSan and run it for SECONDS (default 60) from its seed
# corpus: spki (tests/fuzz/fuzz_spki.c against native/spki.c, the default) or h2 (tests/fuzz/fuzz_h2.c
# against native/h2glue.c, built with DATA padding on and one mapping at a time for nghttp2's big blocks,
# and the system libnghttp2). Exits non-zero on any finding (crash, sanitizer report, failed check,
# leak, timeout, OOM); the reproducer is printed as hex and kept in the work dir.
# Usage: tests/fuzz/run.sh [SECONDS] [spki|h2]   (needs clang with libFuzzer, e.g. Debian's clang + libclang-rt-dev)
set -euo pipefail
cd "$(dirname "$0")/../.."

SECONDS_TO_RUN="${1:-60}"
TARGET="${2:-spki}"
case "$TARGET" in
    spki) SOURCES=(tests/fuzz/fuzz_spki.c native/spki.c -lcrypto); SEEDS=tests/fuzz/corpus
          EXTRA=(-dict=tests/fuzz/spki.dict -max_len=8192) ;;
    h2)   SOURCES=(-DTXG_H2_TEST_PADDING -DTXG_H2_BIG_LIVE_MAX=1 tests/fuzz/fuzz_h2.c native/h2glue.c -lnghttp2); SEEDS=tests/fuzz/corpus_h2
          EXTRA=(-max_len=16384) ;;
    *)    echo "tests/fuzz/run.sh: unknown target $TARGET (spki or h2)" >&2; exit 2 ;;
esac
NAME="fuzz_$TARGET"
CC="${FUZZ_CC:-clang}"
WORK="${FUZZ_WORKDIR:-$(mktemp -d -t txgate-fuzz.XXXXXX)}"
mkdir -p "$WORK/corpus" "$WORK/artifacts"

if ! command -v "$CC" >/dev/null; then
    echo "tests/fuzz/run.sh: $CC not found (apt-get install clang libclang-rt-14-dev)" >&2
    exit 2
fi

"$CC" -g -O1 -fno-omit-frame-pointer \
    -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
    -Wall -Wextra -Werror -Inative \
    "${SOURCES[@]}" -o "$WORK/$NAME"

echo "$NAME: running ${SECONDS_TO_RUN}s in $WORK"
set +e
ASAN_OPTIONS="detect_leaks=1:abort_on_error=0" \
UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
"$WORK/$NAME" \
    -max_total_time="$SECONDS_TO_RUN" -timeout=10 -rss_limit_mb=2048 "${EXTRA[@]}" \
    -artifact_prefix="$WORK/artifacts/" -print_final_stats=1 \
    "$WORK/corpus" "$SEEDS" > "$WORK/fuzz.log" 2>&1
rc=$?
set -e
grep -E "^(#[0-9]+[[:space:]]+DONE|INFO: Loaded|INFO: seed corpus|stat::number_of_executed_units|stat::peak_rss_mb|stat::new_units_added)" "$WORK/fuzz.log" || true
if [ "$rc" -ne 0 ] || ls "$WORK/artifacts/"* >/dev/null 2>&1; then
    echo "$NAME: FINDING (exit $rc); log tail:" >&2
    tail -n 60 "$WORK/fuzz.log" >&2
    for a in "$WORK/artifacts/"*; do
        [ -e "$a" ] || continue
        echo "reproducer $a:" >&2
        od -An -tx1 -v "$a" | head -n 64 >&2
    done
    exit 1
fi
echo "$NAME: no findings in ${SECONDS_TO_RUN}s"
