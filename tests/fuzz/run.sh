#!/usr/bin/env bash
# Build tests/fuzz/fuzz_spki.c against native/spki.c with libFuzzer + ASan + UBSan and run it for
# SECONDS (default 60) from the seed corpus. Exits non-zero on any finding (crash, sanitizer report,
# failed check, leak, timeout, OOM); the reproducer is printed as hex and kept in the work dir.
# Usage: tests/fuzz/run.sh [SECONDS]    (needs clang with libFuzzer, e.g. Debian's clang + libclang-rt-dev)
set -euo pipefail
cd "$(dirname "$0")/../.."

SECONDS_TO_RUN="${1:-60}"
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
    tests/fuzz/fuzz_spki.c native/spki.c -lcrypto -o "$WORK/fuzz_spki"

echo "fuzz_spki: running ${SECONDS_TO_RUN}s in $WORK"
set +e
ASAN_OPTIONS="detect_leaks=1:abort_on_error=0" \
UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
"$WORK/fuzz_spki" \
    -max_total_time="$SECONDS_TO_RUN" -timeout=10 -rss_limit_mb=2048 -max_len=8192 \
    -dict=tests/fuzz/spki.dict -artifact_prefix="$WORK/artifacts/" -print_final_stats=1 \
    "$WORK/corpus" tests/fuzz/corpus > "$WORK/fuzz.log" 2>&1
rc=$?
set -e
grep -E "^(#[0-9]+[[:space:]]+DONE|INFO: Loaded|INFO: seed corpus|stat::number_of_executed_units|stat::peak_rss_mb|stat::new_units_added)" "$WORK/fuzz.log" || true
if [ "$rc" -ne 0 ] || ls "$WORK/artifacts/"* >/dev/null 2>&1; then
    echo "fuzz_spki: FINDING (exit $rc); log tail:" >&2
    tail -n 60 "$WORK/fuzz.log" >&2
    for a in "$WORK/artifacts/"*; do
        [ -e "$a" ] || continue
        echo "reproducer $a:" >&2
        od -An -tx1 -v "$a" | head -n 64 >&2
    done
    exit 1
fi
echo "fuzz_spki: no findings in ${SECONDS_TO_RUN}s"
