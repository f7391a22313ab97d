#!/usr/bin/env bash
# The test command: install CallFS with its test extras into a virtual environment (built from
# this checkout, native extensions compiled), then run the whole suite against real servers.
# Usage: ci/test.sh [pytest arguments...]
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${CALLFS_VENV:-.venv}

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "CallFS needs Python 3.11 or newer" >&2
    exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
    if ! "$PYTHON" -m venv "$VENV" 2>/dev/null; then
        # Debian splits venv out of the interpreter package.
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            apt-get update -qq && apt-get install -y -qq python3-venv python3-dev gcc >/dev/null
            rm -rf "$VENV"
            "$PYTHON" -m venv "$VENV"
        else
            echo "cannot create a virtual environment: install python3-venv" >&2
            exit 1
        fi
    fi
fi

"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check ".[test]"

# PostgreSQL and Redis on loopback: started (or installed, as root) when not running.
bash ci/services.sh

# Where the machine allows it, a reflink-capable filesystem, so that the copy tests exercise
# reflinks too (they are skipped otherwise).
CALLFS_REFLINK_DIR=$(bash ci/reflink.sh)
export CALLFS_REFLINK_DIR
if [ -n "$CALLFS_REFLINK_DIR" ]; then
    trap 'bash ci/reflink.sh --remove "$CALLFS_REFLINK_DIR"' EXIT
fi

# Run from the installed package, not the source tree (which holds no compiled modules):
# pytest is started directly, so the checkout's root is not put on sys.path.
"$VENV/bin/pytest" -p no:cacheprovider "$@" tests
