#!/usr/bin/env bash
# Install the Azurite emulator (npm `azurite`, pinned) into target/azurite/ of the workspace
# if it is not there yet, and print the path of its `azurite-blob` binary.
#
# Used by host/tests/passthrough.rs (through target/azurite/node_modules/.bin/azurite-blob, or
# BLOBRING_AZURITE=<path>). Needs Node.js >= 20 and npm. Idempotent: a second run only prints
# the path.
set -euo pipefail

VERSION="3.37.0"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX="$ROOT/target/azurite"
BIN="$PREFIX/node_modules/.bin/azurite-blob"
PKG="$PREFIX/node_modules/azurite/package.json"

installed_version() {
    [ -f "$PKG" ] && sed -n 's/^ *"version": *"\([^"]*\)".*/\1/p' "$PKG" | head -n1
}

if [ ! -x "$BIN" ] || [ "$(installed_version)" != "$VERSION" ]; then
    if ! command -v npm >/dev/null 2>&1; then
        echo "scripts/azurite.sh: npm not found; install Node.js (>= 20) and npm first" >&2
        exit 1
    fi
    mkdir -p "$PREFIX"
    echo "scripts/azurite.sh: installing azurite@$VERSION into $PREFIX" >&2
    npm install --prefix "$PREFIX" --no-audit --no-fund "azurite@$VERSION" >&2
fi

if [ ! -x "$BIN" ]; then
    echo "scripts/azurite.sh: $BIN is missing after npm install" >&2
    exit 1
fi
echo "$BIN"
