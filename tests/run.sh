#!/usr/bin/env bash
# The test command (README): installs what the suite needs when missing, then runs it.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v curl >/dev/null || missing+=(curl)
command -v openssl >/dev/null || missing+=(openssl)
command -v h2load >/dev/null || missing+=(nghttp2-client)
command -v nghttp >/dev/null || missing+=(nghttp2-client)
command -v nginx >/dev/null || missing+=(nginx-light)
command -v ss >/dev/null || missing+=(iproute2)  # tests/test_workers_e2e.py reads accept queues
command -v gcc >/dev/null || missing+=(gcc)
command -v pebble >/dev/null || missing+=(pebble)
command -v redis-server >/dev/null || missing+=(redis-server)  # the Redis store and ACME fleet tests
command -v chromium >/dev/null || missing+=(chromium)  # the admin status page, loaded headless
dpkg -s libssl-dev >/dev/null 2>&1 || missing+=(libssl-dev)
dpkg -s libnghttp2-dev >/dev/null 2>&1 || missing+=(libnghttp2-dev)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "tests/run.sh: please install: ${missing[*]}" >&2
        exit 1
    fi
fi

PY="${PYTHON:-python3}"
# The build tools first: a fresh venv has too old a setuptools and no wheel for the packaging tests.
"$PY" -m pip install -q --disable-pip-version-check -r tests/build-requirements.txt
# compat mode exposes twisted/plugins/ and builds native code in place.
"$PY" -m pip install -q --disable-pip-version-check -e ".[test]" --config-settings editable_mode=compat
exec "$PY" -m pytest -q -p no:cacheprovider "$@"
