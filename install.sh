#!/usr/bin/env bash
# install.sh — install, upgrade or remove oknek on Ubuntu 22.04/24.04 or Debian 12.
#
#   sudo ./install.sh [options] [SOURCE]     install or upgrade (SOURCE: https:// URL or directory)
#   sudo ./install.sh --uninstall [--purge]  remove oknek (evidence is kept unless --purge)
#
# SOURCE is a release directory: SHA256SUMS, oknek-VERSION-x86_64-linux.tar.gz,
# oknek-rules-VERSION.tar.gz and a .minisig for each. Without SOURCE, the directory this script
# is in. Nothing is installed before every signature has been checked with openssl against the
# oknek release key pinned below (Ed25519, minisign format), the checksums match and the
# version is not older than the installed one.
#
# Options:
#   --pubkey FILE        Trust this minisign public key instead of the pinned release key
#                        (private mirrors, tests); announced loudly
#   --cacert FILE        CA certificate for an https SOURCE with a private CA (TLS only: the
#                        signatures are checked either way)
#   --allow-downgrade    Install a version older than the installed one
#   --no-start           Install but do not enable or start the service
#   --root DIR           Install into DIR instead of / (images, tests); implies --no-start
#   --uninstall          Remove oknek; keeps /var/lib/oknek evidence and host key
#   --purge              With --uninstall: remove the evidence and host key too
#   -h, --help           Show this help
set -euo pipefail

# The oknek release key (keys/oknek-release.pub in the source tree).
RELEASE_KEY_ID=E4311B4A02BFC76A
RELEASE_PUBKEY=RWRqx78CShsx5PUFd1AymBh30vpVqJG+d0HRkEhroSHINX8GPsBfTF0W

# An Ed25519 SubjectPublicKeyInfo (DER) is this prefix followed by the 32 key bytes.
ED25519_SPKI_PREFIX=302a300506032b6570032100

say() { printf 'install.sh: %s\n' "$*"; }
die() {
    printf 'install.sh: REFUSED: %s\n' "$*" >&2
    printf 'install.sh: nothing was installed or changed.\n' >&2
    exit 1
}
fail() {
    printf 'install.sh: error: %s\n' "$*" >&2
    exit 1
}

usage() { sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; }

source_arg=
pubkey_file=
cacert=
allow_downgrade=false
start=true
root=
uninstall=false
purge=false
while [ $# -gt 0 ]; do
    case $1 in
        --pubkey) pubkey_file=${2:?--pubkey needs a file}; shift 2 ;;
        --cacert) cacert=${2:?--cacert needs a file}; shift 2 ;;
        --allow-downgrade) allow_downgrade=true; shift ;;
        --no-start) start=false; shift ;;
        --root) root=${2:?--root needs a directory}; start=false; shift 2 ;;
        --uninstall) uninstall=true; shift ;;
        --purge) purge=true; shift ;;
        -h | --help) usage; exit 0 ;;
        -*) fail "unknown option $1 (see --help)" ;;
        *)
            [ -z "$source_arg" ] || fail "only one SOURCE, got '$source_arg' and '$1'"
            source_arg=$1
            shift
            ;;
    esac
done

if [ -n "$root" ]; then
    mkdir -p "$root"
    root=$(cd "$root" && pwd -P)
    [ "$root" != / ] || root=
elif [ "$(id -u)" -ne 0 ]; then
    fail "run as root (sudo $0 …), or give --root DIR"
fi

# Where everything goes (under --root when given).
bin_oknek=$root/usr/local/bin/oknek
bin_oknekd=$root/usr/local/sbin/oknekd
lib_dir=$root/usr/local/lib/oknek
share_dir=$root/usr/local/share/oknek
unit_file=$root/usr/local/lib/systemd/system/oknekd.service
etc_dir=$root/etc/oknek
state_dir=$root/var/lib/oknek
rules_dir=$state_dir/rules
version_file=$lib_dir/VERSION

have_systemd() { [ -z "$root" ] && [ -d /run/systemd/system ]; }

# ---------------------------------------------------------------------------------------------
# Uninstall
# ---------------------------------------------------------------------------------------------
if $uninstall; then
    if have_systemd; then
        systemctl disable --now oknekd.service 2>/dev/null || true
    fi
    # Agent drop-ins point at the shim that is about to go.
    if [ -d "$root/etc/systemd/system" ]; then
        find "$root/etc/systemd/system" -path '*.d/oknek-agent.conf' -print -delete |
            sed 's/^/install.sh: removed agent drop-in /'
    fi
    rm -f "$bin_oknek" "$bin_oknekd" "$unit_file"
    rm -rf "$lib_dir" "$share_dir" "$etc_dir" "$rules_dir" "$root/run/oknek"
    # Pinned BPF programs keep enforcing without the daemon: remove them with it.
    [ -n "$root" ] || rm -rf /sys/fs/bpf/oknek
    if have_systemd; then
        systemctl daemon-reload || true
    fi
    if $purge; then
        rm -rf "$state_dir"
        say "oknek removed, including evidence and the host key ($state_dir)"
    else
        say "oknek removed; evidence and the host key stay in $state_dir (--purge removes them)"
    fi
    exit 0
fi

# ---------------------------------------------------------------------------------------------
# Tools a stock system has
# ---------------------------------------------------------------------------------------------
for tool in openssl sha256sum tar gzip base64 od sort; do
    command -v "$tool" >/dev/null || fail "$tool is missing"
done
case $(openssl version 2>/dev/null) in
    "OpenSSL 3."*) ;;
    *) fail "OpenSSL 3 is needed to check Ed25519 signatures (found: $(openssl version 2>&1))" ;;
esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/release" "$work/check"

# ---------------------------------------------------------------------------------------------
# Signature checks with openssl: minisign's prehashed Ed25519 (algorithm ED)
# ---------------------------------------------------------------------------------------------
to_hex() { od -An -v -tx1 | tr -d ' \n'; }
hex_to_file() { printf '%b' "$(printf '%s' "$1" | sed 's/../\\x&/g')" >"$2"; }
# minisign prints key ids as the little-endian number they are.
show_key_id() { printf '%s' "$1" | sed 's/../& /g' | tr ' ' '\n' | tac | tr -d '\n' | tr 'a-f' 'A-F'; }

# Loads the trusted key: sets key_id_hex and writes $work/check/key.pem.
load_key() {
    local b64=$1 hex
    hex=$(printf '%s' "$b64" | base64 -d 2>/dev/null | to_hex) || true
    if [ "${#hex}" -ne 84 ] || [ "${hex:0:4}" != 4564 ]; then
        die "the trusted public key is not a minisign Ed25519 key"
    fi
    key_id_hex=${hex:4:16}
    hex_to_file "$ED25519_SPKI_PREFIX${hex:20:64}" "$work/check/key.der"
    openssl pkey -pubin -inform DER -in "$work/check/key.der" -out "$work/check/key.pem" 2>/dev/null ||
        die "openssl cannot read the trusted public key"
}

# verify FILE: checks FILE.minisig over FILE and that its trusted comment names FILE.
# Sets signed_version.
verify() {
    local file=$1 name sig line2 line3 line4 hex tc
    name=$(basename "$file")
    sig=$file.minisig
    [ -f "$file" ] || die "$name is missing"
    [ -f "$sig" ] || die "$name.minisig is missing: unsigned file"
    [ "$(sed -n 1p "$sig" | cut -c1-18)" = "untrusted comment:" ] || die "$name.minisig is not a minisign signature"
    line2=$(sed -n 2p "$sig")
    line3=$(sed -n 3p "$sig")
    line4=$(sed -n 4p "$sig")
    hex=$(printf '%s' "$line2" | base64 -d 2>/dev/null | to_hex) || true
    [ "${#hex}" -eq 148 ] || die "$name.minisig is malformed"
    case ${hex:0:4} in
        4544) ;;
        4564) die "$name.minisig is a legacy (not prehashed) signature" ;;
        *) die "$name.minisig uses an unknown algorithm" ;;
    esac
    [ "${hex:4:16}" = "$key_id_hex" ] ||
        die "$name is signed by key $(show_key_id "${hex:4:16}"), not by the trusted key $(show_key_id "$key_id_hex")"
    case $line3 in
        "trusted comment: "*) tc=${line3#trusted comment: } ;;
        *) die "$name.minisig has no trusted comment" ;;
    esac
    hex_to_file "${hex:20:128}" "$work/check/sig"
    printf '%s' "$line4" | base64 -d >"$work/check/global_sig" 2>/dev/null || die "$name.minisig is malformed"
    [ "$(wc -c <"$work/check/global_sig")" -eq 64 ] || die "$name.minisig is malformed"

    # The file: Ed25519 over its BLAKE2b-512 digest.
    openssl dgst -blake2b512 -binary "$file" >"$work/check/digest"
    openssl pkeyutl -verify -pubin -inkey "$work/check/key.pem" -rawin \
        -in "$work/check/digest" -sigfile "$work/check/sig" >/dev/null 2>&1 ||
        die "$name does not match its signature (tampered, truncated or corrupted)"
    # The trusted comment: Ed25519 over signature || comment.
    {
        cat "$work/check/sig"
        printf '%s' "$tc"
    } >"$work/check/global"
    openssl pkeyutl -verify -pubin -inkey "$work/check/key.pem" -rawin \
        -in "$work/check/global" -sigfile "$work/check/global_sig" >/dev/null 2>&1 ||
        die "the trusted comment of $name.minisig was altered"

    local field signed_file='' fields=()
    signed_version=
    IFS=$' \t' read -r -a fields <<<"$tc"
    for field in "${fields[@]}"; do
        case $field in
            file:*) signed_file=${field#file:} ;;
            version:*) signed_version=${field#version:} ;;
        esac
    done
    [ "$signed_file" = "$name" ] || die "$name.minisig was made for '$signed_file', not for $name"
    [ -n "$signed_version" ] || die "$name.minisig names no version"
}

# ---------------------------------------------------------------------------------------------
# Fetch (copy or HTTPS download) into $work/release
# ---------------------------------------------------------------------------------------------
if [ -z "$source_arg" ]; then
    source_arg=$(cd "$(dirname "$0")" && pwd -P)
    [ -f "$source_arg/SHA256SUMS" ] || fail "give a release URL or directory (see --help)"
fi
case $source_arg in
    https://*) source_kind=url; source_arg=${source_arg%/} ;;
    *://*) die "only https:// URLs are fetched, not $source_arg" ;;
    *) source_kind=dir; [ -d "$source_arg" ] || die "$source_arg is not a directory" ;;
esac
if [ "$source_kind" = url ]; then
    command -v curl >/dev/null || fail "curl is missing (apt install curl), or download the release and give its directory"
fi

fetch() {
    local name=$1
    if [ "$source_kind" = dir ]; then
        [ -f "$source_arg/$name" ] || die "$name is missing from $source_arg"
        cp "$source_arg/$name" "$work/release/$name"
    else
        local tls=(--proto "=https" --tlsv1.2)
        [ -z "$cacert" ] || tls+=(--cacert "$cacert")
        curl "${tls[@]}" -fsSL --retry 2 -o "$work/release/$name" "$source_arg/$name" ||
            die "cannot download $source_arg/$name"
    fi
}

if [ -n "$pubkey_file" ]; then
    [ -f "$pubkey_file" ] || fail "$pubkey_file does not exist"
    trusted_b64=$(sed -n 2p "$pubkey_file")
    echo "install.sh: ***********************************************************************" >&2
    echo "install.sh: NOTE: trusting the key in $pubkey_file, NOT the pinned oknek release key" >&2
    echo "install.sh: ***********************************************************************" >&2
else
    trusted_b64=$RELEASE_PUBKEY
fi
load_key "$trusted_b64"
if [ -z "$pubkey_file" ] && [ "$(show_key_id "$key_id_hex")" != "$RELEASE_KEY_ID" ]; then
    fail "the pinned release key and its id disagree; this script is damaged"
fi
say "trusted key $(show_key_id "$key_id_hex")"

say "fetching the release from $source_arg"
fetch SHA256SUMS
fetch SHA256SUMS.minisig
verify "$work/release/SHA256SUMS"
version=$signed_version
case $version in
    *[!0-9A-Za-z.+-]* | '') die "SHA256SUMS names an odd version '$version'" ;;
esac
bundle=oknek-$version-x86_64-linux.tar.gz
rules_pack=oknek-rules-$version.tar.gz

for name in "$bundle" "$rules_pack"; do
    grep -Eq "^[0-9a-f]{64} [ *]$name\$" "$work/release/SHA256SUMS" || die "SHA256SUMS does not list $name"
    fetch "$name"
    fetch "$name.minisig"
    verify "$work/release/$name"
    [ "$signed_version" = "$version" ] || die "$name is signed as version $signed_version, the release is $version"
    (cd "$work/release" && grep -E " [ *]$name\$" SHA256SUMS | sha256sum -c --quiet - >/dev/null 2>&1) ||
        die "$name does not match SHA256SUMS (tampered or truncated)"
done
say "signatures and checksums verified: oknek $version"

installed_version=
[ -f "$version_file" ] && installed_version=$(cat "$version_file")
if [ -n "$installed_version" ] && [ "$installed_version" != "$version" ]; then
    older=$(printf '%s\n%s\n' "$version" "$installed_version" | sort -V | head -n1)
    if [ "$older" = "$version" ] && ! $allow_downgrade; then
        die "oknek $installed_version is installed; $version is older (a downgrade; --allow-downgrade to insist)"
    fi
fi

tar -xzf "$work/release/$bundle" -C "$work" --no-same-owner --no-same-permissions ||
    die "$bundle does not unpack"
pkg=$work/oknek-$version-x86_64-linux
for f in bin/oknekd bin/oknek lib/liboknek_preload.so share/systemd/oknekd.service \
    share/systemd/oknek-agent.conf share/etc/oknek.yaml share/etc/preload.conf; do
    [ -f "$pkg/$f" ] || die "$bundle lacks $f"
done

# ---------------------------------------------------------------------------------------------
# Install: from here on the host is changed
# ---------------------------------------------------------------------------------------------
if [ -n "$installed_version" ]; then
    say "upgrading oknek $installed_version → $version${root:+ in $root}"
else
    say "installing oknek $version${root:+ in $root}"
fi

# Replaces a file in one rename, so a running service never sees half a binary.
put() {
    local mode=$1 from=$2 to=$3
    mkdir -p "$(dirname "$to")"
    install -m "$mode" "$from" "$to.new"
    mv -f "$to.new" "$to"
}
# Installs a default only when there is none: the administrator's copy is kept.
put_default() {
    if [ -e "$2" ]; then
        say "kept $2 (yours); the shipped default is in $share_dir/etc/"
    else
        put 0644 "$1" "$2"
    fi
}

put 0755 "$pkg/bin/oknekd" "$bin_oknekd"
put 0755 "$pkg/bin/oknek" "$bin_oknek"
put 0644 "$pkg/lib/liboknek_preload.so" "$lib_dir/liboknek_preload.so"
rm -rf "$share_dir.new"
mkdir -p "$share_dir.new"
cp -r "$pkg/share/." "$share_dir.new/"
rm -rf "$share_dir"
mv "$share_dir.new" "$share_dir"
install -d -m 0755 "$etc_dir"
put_default "$pkg/share/etc/oknek.yaml" "$etc_dir/oknek.yaml"
put_default "$pkg/share/etc/preload.conf" "$etc_dir/preload.conf"
put 0644 "$pkg/share/systemd/oknekd.service" "$unit_file"
install -d -m 0700 "$state_dir"
install -d -m 0755 "$rules_dir"

# The evidence key: created once, never replaced.
"$bin_oknek" keygen --state-dir "$state_dir" --if-missing

# Rules: the shipped pack goes in through `oknek update` (verified, linted, atomic) unless the
# active rules were changed by hand since the last install, which are then kept.
rules_sum() {
    (cd "$1" && find . -type f ! -name .oknek-pack -print0 | LC_ALL=C sort -z |
        xargs -0 -r sha256sum | sha256sum | cut -d' ' -f1)
}
update_rules=true
if [ -d "$rules_dir/active" ]; then
    if [ ! -f "$rules_dir/.installed-sum" ] || [ "$(rules_sum "$rules_dir/active")" != "$(cat "$rules_dir/.installed-sum")" ]; then
        update_rules=false
        say "kept $rules_dir/active (changed since install); the shipped pack is $share_dir/rules,"
        say "  activate it with: oknek update $share_dir/$rules_pack"
        cp "$work/release/$rules_pack" "$work/release/$rules_pack.minisig" "$share_dir/"
    fi
fi
if $update_rules; then
    update_args=(--rules-dir "$rules_dir/active" --runtime-dir "$work/no-daemon")
    [ -z "$pubkey_file" ] || update_args+=(--pubkey "$pubkey_file")
    $allow_downgrade && update_args+=(--allow-downgrade)
    "$bin_oknek" update "${update_args[@]}" "$work/release/$rules_pack" ||
        fail "the shipped rule pack was not activated (see above); binaries are installed"
    rules_sum "$rules_dir/active" >"$rules_dir/.installed-sum"
fi

printf '%s\n' "$version" >"$version_file.new"
mv -f "$version_file.new" "$version_file"

if ! $start; then
    say "installed oknek $version${root:+ in $root}; the service was not started (--no-start/--root)"
    exit 0
fi
if ! have_systemd; then
    say "installed oknek $version; systemd is not running here, start oknekd yourself"
    exit 0
fi

systemctl daemon-reload
systemctl enable oknekd.service
# restart starts a stopped service and upgrades a running one; Type=notify makes it wait
# until oknekd has armed every hook.
if ! systemctl restart oknekd.service; then
    systemctl status --no-pager oknekd.service >&2 || true
    fail "oknekd did not start; see journalctl -u oknekd"
fi
say "oknekd is running"
"$bin_oknek" doctor || true
say "installed oknek $version. Put an agent service under oknek with: oknek agent enable UNIT"
