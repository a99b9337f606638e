#!/usr/bin/env bash
# Builds a release: static stripped oknekd and oknek (musl), the preload shim (glibc cdylib), the
# rule pack, the systemd units and install.sh, packed into versioned tarballs with SHA256SUMS and,
# with --sign, a minisign signature for each artifact.
#
# The same commit gives the same bytes in any directory and on any day: SOURCE_DATE_EPOCH comes
# from the commit, every absolute path is remapped, dependencies are locked, tarballs have fixed
# order, owners, modes and times, and gzip stores no name or time.
#
#   scripts/dist.sh [--out DIR] [--sign SECRET_KEY] [--offline] [--libc musl|gnu]
#   scripts/dist.sh source [--out DIR]      # a source tarball with every dependency vendored
#
# Air-gapped: unpack the source tarball, then run `scripts/dist.sh --offline` inside it.
# --libc gnu builds static-pie glibc binaries instead of musl ones (for hosts without the musl
# target); the daemon does no NSS lookups, so a static glibc is safe.
set -euo pipefail

usage() {
    sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
}

die() {
    echo "dist: error: $*" >&2
    exit 1
}

src_dir=$(cd "$(dirname "$0")/.." && pwd -P)
cd "$src_dir"

mode=build
out_dir=
sign_key=
offline=false
libc=musl
if [ "${1:-}" = source ]; then
    mode=source
    shift
fi
while [ $# -gt 0 ]; do
    case $1 in
        --out) out_dir=${2:?--out needs a directory}; shift 2 ;;
        --sign) sign_key=${2:?--sign needs a minisign secret key file}; shift 2 ;;
        --offline) offline=true; shift ;;
        --libc) libc=${2:?--libc needs musl or gnu}; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done

export LC_ALL=C TZ=UTC
umask 022

# The commit time, so two builds of one commit agree on every timestamp. A source tarball carries
# it in .source-date-epoch because it has no git history.
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
    if [ "$(git -C "$src_dir" rev-parse --show-toplevel 2>/dev/null || true)" = "$src_dir" ]; then
        SOURCE_DATE_EPOCH=$(git -C "$src_dir" log -1 --format=%ct)
    elif [ -f "$src_dir/.source-date-epoch" ]; then
        SOURCE_DATE_EPOCH=$(cat "$src_dir/.source-date-epoch")
    else
        die "not a git checkout and no .source-date-epoch: set SOURCE_DATE_EPOCH"
    fi
fi
case $SOURCE_DATE_EPOCH in
    '' | *[!0-9]*) die "SOURCE_DATE_EPOCH must be a number of seconds, got '$SOURCE_DATE_EPOCH'" ;;
esac
export SOURCE_DATE_EPOCH

version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml)
[ -n "$version" ] || die "no version in Cargo.toml [workspace.package]"

# Deterministic tar + gzip of one directory (given relative to the current directory).
pack() {
    local archive=$1 dir=$2
    find "$dir" -type d -exec chmod 0755 {} +
    find "$dir" -type f -exec chmod go-w,a+r {} +
    tar --sort=name --format=gnu --owner=0 --group=0 --numeric-owner \
        --mtime="@$SOURCE_DATE_EPOCH" -cf - "$dir" | gzip -9 -n >"$archive"
}

if [ "$mode" = source ]; then
    out_dir=${out_dir:-$src_dir/target/dist}
    mkdir -p "$out_dir"
    out_dir=$(cd "$out_dir" && pwd -P)
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    name=oknek-$version
    tree=$work/$name
    mkdir -p "$tree"
    # Tracked and new (not ignored) files as they are in the working tree; outside git, every
    # file but build output.
    list_sources() {
        if [ "$(git rev-parse --show-toplevel 2>/dev/null || true)" = "$src_dir" ]; then
            git ls-files -z --cached --others --exclude-standard
        else
            find . \( -path ./target -o -path ./vendor -o -path ./.git \) -prune -o -type f -printf '%P\0'
        fi
    }
    list_sources |
        while IFS= read -r -d '' f; do
            [ -e "$f" ] || continue
            mkdir -p "$tree/$(dirname "$f")"
            cp -p "$f" "$tree/$f"
        done
    echo "$SOURCE_DATE_EPOCH" >"$tree/.source-date-epoch"
    mkdir -p "$tree/.cargo"
    # Versioned directory names match the registry's, so a vendored build remaps to the same paths.
    # The vendoring config is appended: the tree's own .cargo/config.toml sets the SQLite flags.
    (cd "$tree" && cargo vendor --locked --versioned-dirs vendor >>"$tree/.cargo/config.toml")
    (cd "$work" && pack "$out_dir/$name-src.tar.gz" "$name")
    echo "$out_dir/$name-src.tar.gz"
    exit 0
fi

target_dir=${CARGO_TARGET_DIR:-$src_dir/target}
mkdir -p "$target_dir"
target_dir=$(cd "$target_dir" && pwd -P)
export CARGO_TARGET_DIR=$target_dir
cargo_home=${CARGO_HOME:-$HOME/.cargo}
out_dir=${out_dir:-$target_dir/dist}

# Every absolute path a binary could carry (panic locations, debug paths of C objects) is
# remapped: the source tree, the target dir, and dependency sources whether they come from the
# registry cache or from vendor/. rustc applies the last matching prefix, so wider ones go first.
remaps=("$src_dir=/build/oknek" "$target_dir=/build/target" "$cargo_home=/cargo")
for registry_src in "$cargo_home"/registry/src/*/; do
    [ -d "$registry_src" ] && remaps+=("${registry_src%/}=/build/deps")
done
remaps+=("$src_dir/vendor=/build/deps")
rustflags=() cflags=()
for m in "${remaps[@]}"; do
    rustflags+=("--remap-path-prefix=$m")
    cflags+=("-ffile-prefix-map=$m")
done
RUSTFLAGS="${rustflags[*]}"
export RUSTFLAGS
# C sources built by build scripts (the bundled SQLite) get the same remapping.
export CFLAGS_x86_64_unknown_linux_musl="${cflags[*]}"
export CFLAGS_x86_64_unknown_linux_gnu="${cflags[*]}"

cargo_flags=(--release --locked)
if $offline; then
    [ -d "$src_dir/vendor" ] || die "--offline needs vendor/ (build from the source tarball: scripts/dist.sh source)"
    cargo_flags+=(--offline)
fi

musl=x86_64-unknown-linux-musl
gnu=x86_64-unknown-linux-gnu
case $libc in
    musl)
        bin_target=$musl
        if ! rustup target list --installed 2>/dev/null | grep -qx "$musl"; then
            # rustup may be absent (distribution rustc): then the build says what is missing.
            command -v rustup >/dev/null && die "the $musl target is missing: rustup target add $musl (or --libc gnu)"
        fi
        command -v musl-gcc >/dev/null || die "musl-gcc is missing (Debian/Ubuntu: apt install musl-tools)"
        ;;
    gnu) bin_target=$gnu ;;
    *) die "--libc is musl or gnu, not '$libc'" ;;
esac

echo "dist: oknek $version, SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH, $libc, target dir $target_dir"
if [ "$libc" = musl ]; then
    # musl links statically by default; the bundled SQLite is C, compiled with musl-gcc.
    CC_x86_64_unknown_linux_musl=musl-gcc \
        cargo build "${cargo_flags[@]}" --target "$musl" -p oknekd -p oknek --bins
else
    # static-pie glibc: crt-static on the gnu target.
    RUSTFLAGS="$RUSTFLAGS -C target-feature=+crt-static" \
        cargo build "${cargo_flags[@]}" --target "$gnu" -p oknekd -p oknek --bins
fi
# The shim is loaded into glibc programs, so it is a glibc shared object (never crt-static;
# with --libc gnu it shares the target dir, so cargo keeps both builds apart by their flags).
cargo build "${cargo_flags[@]}" --target "$gnu" -p oknek-preload

bin_dir=$target_dir/$bin_target/release
shim=$target_dir/$gnu/release/liboknek_preload.so
for f in "$bin_dir/oknekd" "$bin_dir/oknek" "$shim"; do
    [ -f "$f" ] || die "build produced no $f"
done
built_version=$("$bin_dir/oknek" --version | awk '{print $2}')
[ "$built_version" = "$version" ] || die "oknek --version says $built_version, Cargo.toml $version"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
name=oknek-$version-x86_64-linux
stage=$work/$name
mkdir -p "$stage/bin" "$stage/lib" "$stage/share/rules" "$stage/share/systemd" \
    "$stage/share/etc" "$stage/share/keys"
cp "$bin_dir/oknekd" "$bin_dir/oknek" "$stage/bin/"
cp "$shim" "$stage/lib/"
chmod 0755 "$stage/bin/oknekd" "$stage/bin/oknek" "$stage/lib/liboknek_preload.so"

# The rule pack: the YAML files, the language reference and the fixtures that test them.
rules_name=oknek-rules-$version
rules_stage=$work/$rules_name
mkdir -p "$rules_stage"
cp rules/*.yaml rules/README.md "$rules_stage/"
cp -r rules/fixtures "$rules_stage/"
cp -r "$rules_stage/." "$stage/share/rules/"

cp dist/systemd/oknekd.service dist/systemd/oknek-agent.conf "$stage/share/systemd/"
cp dist/oknek.yaml dist/preload.conf "$stage/share/etc/"
cp keys/oknek-release.pub "$stage/share/keys/"
cp install.sh "$stage/install.sh"
chmod 0755 "$stage/install.sh"
echo "$version" >"$stage/VERSION"

mkdir -p "$out_dir"
out_dir=$(cd "$out_dir" && pwd -P)
rm -f "$out_dir"/oknek-*.tar.gz "$out_dir"/install.sh "$out_dir"/SHA256SUMS "$out_dir"/*.minisig
(cd "$work" && pack "$out_dir/$name.tar.gz" "$name")
(cd "$work" && pack "$out_dir/$rules_name.tar.gz" "$rules_name")
cp install.sh "$out_dir/install.sh"
chmod 0755 "$out_dir/install.sh"
artifacts=("$name.tar.gz" "$rules_name.tar.gz" install.sh)
(cd "$out_dir" && sha256sum "${artifacts[@]}" >SHA256SUMS)

if [ -n "$sign_key" ]; then
    (cd "$out_dir" && "$bin_dir/oknek" sign --key "$sign_key" --version "$version" \
        "${artifacts[@]}" SHA256SUMS)
fi

# Size goals: oknekd ≤ 4 MiB, oknek ≤ 2 MiB, stripped.
size_of() { stat -c %s "$1"; }
echo
printf '%-28s %10s  %s\n' artifact bytes goal
printf '%-28s %10s  %s\n' oknekd "$(size_of "$bin_dir/oknekd")" "≤ 4194304"
printf '%-28s %10s  %s\n' oknek "$(size_of "$bin_dir/oknek")" "≤ 2097152"
printf '%-28s %10s\n' liboknek_preload.so "$(size_of "$shim")"
over=0
[ "$(size_of "$bin_dir/oknekd")" -le 4194304 ] || { echo "dist: warning: oknekd is over its 4 MiB goal" >&2; over=1; }
[ "$(size_of "$bin_dir/oknek")" -le 2097152 ] || { echo "dist: warning: oknek is over its 2 MiB goal" >&2; over=1; }
echo
(cd "$out_dir" && sha256sum ./*)
echo "dist: release in $out_dir"
[ "$over" -eq 0 ] || [ -n "${OKNEK_DIST_ALLOW_OVERSIZE:-}" ] || die "size goals missed (set OKNEK_DIST_ALLOW_OVERSIZE=1 to keep the artifacts anyway)"
