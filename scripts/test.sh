#!/usr/bin/env bash
# Runs every blobring test: formatting, lints, unit and integration tests (real processes),
# loom models, the Python package's pytest suite, and bounded fuzzing. Installs what it needs
# itself: npm's azurite into target/azurite, a Python venv (azure-storage-blob, pyarrow, pytest,
# maturin, fsspec, pandas, numpy, polars, duckdb, dask, distributed; then the blobring wheel
# built from python/) into target/venv,
# cargo-fuzz into ~/.cargo/bin, and (Debian, as root) fonts-dejavu-core for the benchmark's PNG
# charts when no font is present and fuse3 (fusermount3) for the mount tests when missing.
#
#   ./scripts/test.sh            everything (what CI runs)
#   FUZZ_SECONDS=5 ./scripts/test.sh   shorter fuzzing
#   SKIP_FUZZ=1 ./scripts/test.sh      skip the fuzz stage (local iteration only)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
fuzz_seconds=${FUZZ_SECONDS:-30}
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

stage() { printf '\n=== %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }

stage "toolchain"
rustup show active-toolchain
cargo --version

stage "peers (Azurite into target/azurite)"
BLOBRING_AZURITE=$(./scripts/azurite.sh)
export BLOBRING_AZURITE

stage "python venv (target/venv: the gateway tests' and the Python package's dependencies)"
# tests/tests/gateway.rs runs azure-storage-blob and pyarrow through `blobring gateway`;
# python/tests (the blobring package) needs maturin to build the wheel, and the engines it is
# tested with: fsspec, pandas, numpy, polars, duckdb, dask[dataframe], distributed, adlfs
# (and obstore, which python/bench/bench.py compares with).
# The check names every package, so a venv made before one was added is completed.
venv="$root/target/venv"
if ! "$venv/bin/python" -c 'import azure.storage.blob, pyarrow, pytest, fsspec, pandas, numpy
import polars, duckdb, dask.dataframe, distributed, adlfs, obstore' 2>/dev/null || [ ! -x "$venv/bin/maturin" ]; then
    python=$(command -v python3.11 || command -v python3)
    "$python" -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
        azure-storage-blob==12.31.1 pyarrow==26.0.1 pytest==9.2.0 \
        maturin==1.16.0 fsspec==2026.9.0 pandas==3.1.1 numpy==2.4.6 polars==2.1.0 duckdb==2.0.1 \
        "dask[dataframe]==2026.8.0" distributed==2026.8.0 adlfs==2026.8.0 obstore==0.12.1
fi
export BLOBRING_VENV="$venv"

stage "chart font (blobring-bench's PNG charts need a TrueType font)"
if [ -z "${BLOBRING_BENCH_FONT:-}" ] && [ ! -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends fonts-dejavu-core
    else
        echo "no DejaVu Sans: install fonts-dejavu-core or set BLOBRING_BENCH_FONT to a .ttf file" >&2
        exit 1
    fi
fi

stage "fuse3 (tests/tests/mount.rs mounts containers through FUSE)"
# The mount tests need /dev/fuse and fusermount3 (the tests unmount with `fusermount3 -u -z`;
# a non-root mount also mounts through it).
if ! command -v fusermount3 >/dev/null; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends fuse3
    else
        echo "no fusermount3: install fuse3 (Debian: apt-get install fuse3)" >&2
        exit 1
    fi
fi
if [ ! -c /dev/fuse ]; then
    echo "no /dev/fuse: load the fuse module (modprobe fuse) or run where FUSE is available" >&2
    exit 1
fi

stage "format"
cargo fmt --all -- --check

stage "clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

stage "feature combinations (each library with none and each one of its features)"
# The workspace build unifies features; these are the builds a user of one crate gets. Tests and
# examples are checked too: one that needs a feature declares it (`required-features`), so
# cargo skips it in a build without that feature rather than failing to compile it.
for combo in \
    "blobring" "blobring --features object-store" \
    "blobring-vmbus" "blobring-vmbus --features test-support" \
    "blobring-host" "blobring-host --features rest" "blobring-host --features passthrough"; do
    # shellcheck disable=SC2086 # the combination is words on purpose
    cargo clippy --locked --all-targets --no-default-features -p $combo -- -D warnings
done

stage "docs (rustdoc warnings are errors: broken or private links, bad HTML)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --lib --no-deps --locked

stage "tests (unit, property, cross-process)"
# Release: the cross-process ring test moves 10 million entries, and benchmarks-in-miniature
# are only meaningful optimised. Debug assertions stay on via the test profile override below.
# The cross-process tests start the real binaries (blobring-host, blobringd, blobring, test
# clients) from this target directory: build them all first.
cargo build --workspace --release --locked --bins
cargo test --workspace --release --locked --no-fail-fast

stage "python package (wheel from python/ into target/venv, then pytest against a real stack)"
# `pip install ./python` runs maturin (the PEP 517 backend) on the workspace's target
# directory in release, so only the extension module itself is built here. The suite starts
# blobring-host and blobringd from target/release (built above) and kills them at the end.
# (--no-build-isolation: the venv's pinned maturin, which must be on PATH, builds it.)
PATH="$venv/bin:$PATH" "$venv/bin/pip" install --quiet --disable-pip-version-check \
    --no-build-isolation --no-deps --force-reinstall ./python
BLOBRING_BIN_DIR="$root/target/release" "$venv/bin/pytest" -q -p no:cacheprovider python/tests

stage "loom models (ring publish/consume, sleep/wake)"
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR="$root/target/loom" \
    cargo test -p blobring-ring --release --locked --test loom

if [ "${SKIP_FUZZ:-0}" != 1 ] && [ -f fuzz/Cargo.toml ]; then
    stage "fuzzing (${fuzz_seconds}s per target)"
    if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
        cargo +nightly install --locked cargo-fuzz
    fi
    for target in $(cargo +nightly fuzz list --fuzz-dir fuzz); do
        echo "--- fuzz target $target"
        mkdir -p "fuzz/corpus/$target"
        if [ -d "fuzz/seeds/$target" ]; then
            cp -n "fuzz/seeds/$target"/* "fuzz/corpus/$target/" 2>/dev/null || true
        fi
        cargo +nightly fuzz run --fuzz-dir fuzz "$target" "fuzz/corpus/$target" -- \
            -max_total_time="$fuzz_seconds" -rss_limit_mb=2048 -print_final_stats=1 2>&1 |
            tail -n 12
    done
fi

stage "all tests passed"
