#!/usr/bin/env bash
# The whole test suite from a fresh clone: creates .venv, installs the package with its test extras (a CPU
# build of torch from the pinned version), installs Debian's chromium for the browser test when it can, runs
# pytest. Extra arguments go to pytest (e.g. `bash scripts/test.sh tests/model -x`).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0 -e ".[test]"
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
    || echo "note: could not install chromium; the browser test will be skipped"
fi
# pytest exits 5 when it collects no test: that fails this script too.
exec .venv/bin/python -m pytest "$@"
