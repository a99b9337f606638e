#!/usr/bin/env bash
# Assembles the rule set services.oknek installs at /etc/oknek/rules, in layers: the pack shipped
# with oknek, then signed rule packs (each verified with minisign before a byte of it is
# unpacked), then the files of services.oknek.rules. A later layer replaces a same-named file of
# an earlier one; two signed packs may not ship the same file. Finally the whole set is linted
# with `oknek rules check`, so a broken set fails the system build, not the running daemon.
#
#   build-rules.sh OUT [--shipped DIR] [--pack TARBALL SIGNATURE PUBKEY_FILE]...
#                      [--file NAME SOURCE]... [--check OKNEK_BINARY]
set -euo pipefail

die() {
    echo "oknek rules: error: $*" >&2
    exit 1
}

[ $# -ge 1 ] || die "usage: build-rules.sh OUT [--shipped DIR] [--pack TARBALL SIG KEY]... [--file NAME SRC]... [--check OKNEK]"
out=$1
shift
[ ! -e "$out" ] || die "$out already exists"
mkdir -p "$out"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
: >"$work/from-packs"

# Copies the rule files (*.yaml, *.yml) directly inside $1 into $out; fixtures and docs stay out.
copy_rule_files() {
    local dir=$1 origin=$2 file name found=false
    for file in "$dir"/*.yaml "$dir"/*.yml; do
        [ -f "$file" ] || continue
        name=${file##*/}
        case $name in .*) continue ;; esac
        if [ "$origin" = pack ]; then
            if grep -Fxq -- "$name" "$work/from-packs"; then
                die "two signed rule packs ship $name; install one of them, or replace the file in services.oknek.rules"
            fi
            echo "$name" >>"$work/from-packs"
        fi
        install -m 0444 "$file" "$out/$name"
        found=true
    done
    [ "$found" = true ] || die "no rule files (*.yaml) in $dir"
}

check=
while [ $# -gt 0 ]; do
    case $1 in
        --shipped)
            [ $# -ge 2 ] || die "--shipped needs a directory"
            copy_rule_files "$2" shipped
            shift 2
            ;;
        --pack)
            [ $# -ge 4 ] || die "--pack needs TARBALL SIGNATURE PUBKEY_FILE"
            tarball=$2 signature=$3 pubkey=$4
            shift 4
            [ -f "$tarball" ] || die "rule pack $tarball does not exist"
            [ -f "$signature" ] || die "rule pack $tarball has no signature at $signature"
            if ! minisign -V -q -p "$pubkey" -m "$tarball" -x "$signature" >/dev/null 2>"$work/minisign.err"; then
                die "rule pack $tarball: signature does not verify with the key in $pubkey: $(cat "$work/minisign.err")"
            fi
            unpacked=$work/pack.$RANDOM$RANDOM
            mkdir "$unpacked"
            tar -xzf "$tarball" -C "$unpacked" --no-same-owner --no-same-permissions ||
                die "rule pack $tarball: cannot unpack"
            # Release packs hold one top-level directory (oknek-rules-VERSION/); accept flat ones too.
            mapfile -t entries < <(find "$unpacked" -mindepth 1 -maxdepth 1)
            if [ "${#entries[@]}" -eq 1 ] && [ -d "${entries[0]}" ]; then
                unpacked=${entries[0]}
            fi
            copy_rule_files "$unpacked" pack
            ;;
        --file)
            [ $# -ge 3 ] || die "--file needs NAME SOURCE"
            case $2 in
                */* | .* | '') die "rule file name '$2' must be a plain file name not starting with '.'" ;;
            esac
            [ -f "$3" ] || die "rule file source $3 does not exist"
            rm -f "$out/$2"
            install -m 0444 "$3" "$out/$2"
            shift 3
            ;;
        --check)
            [ $# -ge 2 ] || die "--check needs the oknek binary"
            check=$2
            shift 2
            ;;
        *) die "unknown argument $1" ;;
    esac
done

if [ -n "$check" ]; then
    "$check" rules check "$out" || die "the assembled rule set is rejected (messages above name file:line:column)"
fi
chmod 0555 "$out"
