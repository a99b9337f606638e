#!/usr/bin/env bash
# Reproducibility test: builds the release twice and compares every byte.
#   build A: a copy of this tree in one temporary directory, dependencies from the registry
#   build B: the vendored source tarball (scripts/dist.sh source) unpacked in another directory
#            and built with --offline --locked, as on an air-gapped machine
# Both are signed with the same throw-away key; artifacts, SHA256SUMS and signatures must be
# identical. Slow (two clean release builds). Exit 0 only when everything matches.
#
#   scripts/repro-test.sh [--keep] [--release-out DIR]
#
# --keep keeps the temporary directory; --release-out DIR copies build A's release (unsigned:
# SHA256SUMS, tarballs, install.sh) to DIR for later tests. Without the musl target or musl-gcc
# it prints "skipped: REASON" (exit 0), or fails under CI=true, where .ci/run installs both.
set -euo pipefail

src_dir=$(cd "$(dirname "$0")/.." && pwd -P)
keep=false
release_out=
while [ $# -gt 0 ]; do
    case $1 in
        --keep) keep=true; shift ;;
        --release-out) release_out=${2:?--release-out needs a directory}; shift 2 ;;
        *) echo "repro-test: unknown argument $1" >&2; exit 2 ;;
    esac
done

skip() {
    if [ "${CI:-}" = true ]; then
        echo "repro-test: cannot run under CI: $*" >&2
        exit 1
    fi
    echo "skipped: $*"
    exit 0
}
command -v musl-gcc >/dev/null || skip "musl-gcc is missing (apt install musl-tools)"
if command -v rustup >/dev/null &&
    ! rustup target list --installed | grep -qx x86_64-unknown-linux-musl; then
    skip "the x86_64-unknown-linux-musl target is missing (rustup target add x86_64-unknown-linux-musl)"
fi

export LC_ALL=C
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
    SOURCE_DATE_EPOCH=$(git -C "$src_dir" log -1 --format=%ct 2>/dev/null || true)
    [ -n "$SOURCE_DATE_EPOCH" ] || { echo "repro-test: not a git checkout: set SOURCE_DATE_EPOCH" >&2; exit 1; }
fi
export SOURCE_DATE_EPOCH
# Size goals are dist.sh's verdict; this test is about identical bytes.
export OKNEK_DIST_ALLOW_OVERSIZE=1

work=$(mktemp -d /tmp/oknek-repro.XXXXXX)
if $keep; then
    echo "repro-test: keeping $work"
else
    trap 'rm -rf "$work"' EXIT
fi

# Build A: the working tree (tracked and new files) copied to a fresh directory.
tree_a=$work/a/oknek
mkdir -p "$tree_a"
(cd "$src_dir" && git ls-files -z --cached --others --exclude-standard) |
    (cd "$src_dir" && while IFS= read -r -d '' f; do
        [ -e "$f" ] || continue
        mkdir -p "$tree_a/$(dirname "$f")"
        cp -p "$f" "$tree_a/$f"
    done)
# No .git in the copy: the commit time comes from SOURCE_DATE_EPOCH, exported above.

echo "==> build A in $tree_a"
CARGO_TARGET_DIR=$work/a/target "$tree_a/scripts/dist.sh" --out "$work/a/out"
if [ -n "$release_out" ]; then
    mkdir -p "$release_out"
    cp "$work"/a/out/* "$release_out/"
fi

# A throw-away signing key, made by the freshly built oknek.
oknek_a=$work/a/target/x86_64-unknown-linux-musl/release/oknek
"$oknek_a" sign --generate --key "$work/test.key" --pubkey "$work/test.pub" >/dev/null

echo "==> source tarball with vendored dependencies"
CARGO_TARGET_DIR=$work/a/target "$tree_a/scripts/dist.sh" source --out "$work/src"
mkdir -p "$work/b/elsewhere/deeper"
tar -xzf "$work"/src/oknek-*-src.tar.gz -C "$work/b/elsewhere/deeper"
tree_b=$(echo "$work"/b/elsewhere/deeper/oknek-*)

echo "==> build B (offline, vendored) in $tree_b"
# An unset SOURCE_DATE_EPOCH proves the tarball carries it.
env -u SOURCE_DATE_EPOCH CARGO_TARGET_DIR="$work/b/target" CARGO_NET_OFFLINE=true \
    "$tree_b/scripts/dist.sh" --offline --out "$work/b/out"

for side in a b; do
    (cd "$work/$side/out" && for f in SHA256SUMS oknek-*.tar.gz install.sh; do
        "$oknek_a" sign --key "$work/test.key" --version test "$f" >/dev/null
    done)
done

echo
echo "==> comparing"
status=0
for f in "$work"/a/out/*; do
    name=$(basename "$f")
    if ! cmp -s "$f" "$work/b/out/$name"; then
        echo "DIFFERENT: $name"
        status=1
    fi
done
for side in a b; do
    echo "build $side:"
    (cd "$work/$side/out" && sha256sum ./*)
done
if [ "$status" -ne 0 ]; then
    # Name the binaries that differ inside the bundles, to start the hunt.
    for side in a b; do
        mkdir -p "$work/$side/unpacked"
        tar -xzf "$work"/$side/out/oknek-*-x86_64-linux.tar.gz -C "$work/$side/unpacked"
    done
    (cd "$work/a/unpacked" && find . -type f | sort) | while read -r f; do
        cmp -s "$work/a/unpacked/$f" "$work/b/unpacked/$f" || echo "  differs inside the bundle: $f"
    done
    echo "repro-test: FAILED — the two builds differ (rerun with --keep to inspect $work)"
    exit 1
fi
echo "repro-test: ok — both builds are byte-identical ($(find "$work/a/out" -type f | wc -l) files)"
