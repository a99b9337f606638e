#!/usr/bin/env bash
# Tests of the NixOS deployment that run without nixpkgs or a binary cache:
#   - every .nix file of the repository parses (nix-instantiate --parse);
#   - the rule-set builder (nixos-module/build-rules.sh) layers, verifies signed packs and lints;
#   - with OKNEK_NIXPKGS_LIB (a nixpkgs lib tree, e.g. nix-community/nixpkgs.lib): the module,
#     evaluated with lib.evalModules, renders config and rules that `oknek rules check` and
#     `oknekd --check` accept and that equal hand-written files, renders the hardened unit,
#     reloads instead of restarting on a policy change, and refuses contradictory settings.
# The flake's packages, checks and NixOS VM test need nixpkgs: see docs/nixos.md.
#
# Environment: OKNEK_NIXPKGS_LIB, OKNEK_BIN_DIR (oknek and oknekd; default
# ${CARGO_TARGET_DIR:-target}/debug). Prints one line per check; exits 1 if any failed.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
repo=$(pwd -P)
tests=$repo/nixos-module/tests

passed=0
failed=0
skipped=0
pass() {
    echo "ok: $1"
    passed=$((passed + 1))
}
fail() {
    echo "FAILED: $1"
    failed=$((failed + 1))
}
skip() {
    echo "skipped: $1"
    skipped=$((skipped + 1))
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Evaluation only (--readonly-mode): a private state dir, so no Nix installation state is needed
# or touched, as root or not.
export NIX_STATE_DIR=$work/nix-state

# --- every .nix file parses -------------------------------------------------------------------
if ! command -v nix-instantiate >/dev/null 2>&1; then
    fail "nix-instantiate not found: install nix (Debian: apt install nix-bin)"
else
    mapfile -t nix_files < <(find . \( -name target -o -name .git -o -name 'target-*' \) -prune -o \
        -name '*.nix' -type f -print | sort)
    bad=()
    for file in "${nix_files[@]}"; do
        nix-instantiate --parse "$file" >/dev/null 2>"$work/parse.err" || bad+=("$file: $(head -3 "$work/parse.err")")
    done
    if [ "${#nix_files[@]}" -eq 0 ]; then
        fail "no .nix files found"
    elif [ "${#bad[@]}" -eq 0 ]; then
        pass "nix-instantiate --parse: ${#nix_files[@]} files"
    else
        fail "nix-instantiate --parse: ${bad[*]}"
    fi
fi

# docs/nixos.md shows the full example these tests evaluate; the two must not drift apart.
if python3 - "$tests/full-example.nix" docs/nixos.md <<'EOF'; then
import re, sys
body = re.sub(r"\A(#[^\n]*\n)+\n?", "", open(sys.argv[1]).read())
doc = open(sys.argv[2]).read()
block = re.search(r"<!-- full-example: begin -->\n```nix\n(.*?)```\n<!-- full-example: end -->", doc, re.S)
sys.exit(0 if block and block.group(1) == body else 1)
EOF
    pass "docs/nixos.md shows nixos-module/tests/full-example.nix as it is"
else
    fail "docs/nixos.md: the full example differs from nixos-module/tests/full-example.nix"
fi

bin_dir=${OKNEK_BIN_DIR:-${CARGO_TARGET_DIR:-target}/debug}
oknek=$bin_dir/oknek
oknekd=$bin_dir/oknekd
if [ ! -x "$oknek" ] || [ ! -x "$oknekd" ]; then
    fail "no oknek/oknekd in $bin_dir: build them first (cargo build -p oknek -p oknekd) or set OKNEK_BIN_DIR"
    echo
    echo "nixos-module: $passed passed, $failed failed, $skipped skipped"
    exit 1
fi

build_rules() {
    bash "$repo/nixos-module/build-rules.sh" "$@"
}

# The digest oknekd computes over a rule set: equal digests mean equal rules and lists.
digest_of() {
    "$oknekd" --check --config "$1" --rules-dir "$2" 2>&1 | sed -n 's/.*digest \(sha256:[0-9a-f]*\).*/\1/p'
}

# --- the rule-set builder ----------------------------------------------------------------------
printf 'oknek_rules: 1\nrules:\n  - id: LOCAL.x\n    title: x\n    kind: open\n    match: { path: /srv/x }\n    action: block\n' >"$work/local.yaml"
printf 'oknek_rules: 1\nrules:\n  - id: LOCAL.broken\n    kind: opn\n    action: block\n' >"$work/broken.yaml"
printf 'oknek_rules: 1\nlists: {}\nrules: []\n' >"$work/empty.yaml"

if build_rules "$work/layered" --shipped rules --file 80-local.yaml "$work/local.yaml" \
    --file 70-r7-baseline.yaml "$work/empty.yaml" --check "$oknek" >"$work/out" 2>&1 &&
    cmp -s "$work/layered/80-local.yaml" "$work/local.yaml" &&
    cmp -s "$work/layered/70-r7-baseline.yaml" "$work/empty.yaml" &&
    cmp -s "$work/layered/10-r1-secrets.yaml" rules/10-r1-secrets.yaml &&
    [ ! -e "$work/layered/fixtures" ] && [ "$(stat -c %a "$work/layered/80-local.yaml")" = 444 ]; then
    pass "build-rules: shipped pack + local file, a local file replaces a shipped one, set linted"
else
    fail "build-rules: layering shipped and local files: $(cat "$work/out")"
fi

if build_rules "$work/broken" --shipped rules --file 80-broken.yaml "$work/broken.yaml" \
    --check "$oknek" >"$work/out" 2>&1; then
    fail "build-rules: a broken rule file was accepted"
elif grep -q "80-broken.yaml" "$work/out" && grep -q "rejected" "$work/out"; then
    pass "build-rules: a broken rule file fails the build, naming the file"
else
    fail "build-rules: broken rule file: unexpected output: $(cat "$work/out")"
fi

if ! command -v minisign >/dev/null 2>&1; then
    skip "signed rule packs need the minisign tool (Debian: apt install minisign)"
else
    keys=$work/keys
    mkdir -p "$keys" "$work/packsrc/oknek-rules-9.9.9" "$work/packsrc2"
    minisign -G -W -p "$keys/good.pub" -s "$keys/good.key" >/dev/null 2>&1
    minisign -G -W -p "$keys/other.pub" -s "$keys/other.key" >/dev/null 2>&1
    cp "$work/local.yaml" "$work/packsrc/oknek-rules-9.9.9/90-pack.yaml"
    cp -r rules/fixtures "$work/packsrc/oknek-rules-9.9.9/"
    tar -czf "$work/pack.tar.gz" -C "$work/packsrc" oknek-rules-9.9.9
    minisign -S -s "$keys/good.key" -m "$work/pack.tar.gz" -t "oknek-rules-9.9.9.tar.gz 9.9.9" >/dev/null 2>&1
    sed 's/LOCAL.x/LOCAL.y/' "$work/local.yaml" >"$work/packsrc2/90-pack.yaml"
    tar -czf "$work/pack2.tar.gz" -C "$work/packsrc2" 90-pack.yaml
    minisign -S -s "$keys/good.key" -m "$work/pack2.tar.gz" >/dev/null 2>&1

    if build_rules "$work/packed" --shipped rules --pack "$work/pack.tar.gz" "$work/pack.tar.gz.minisig" \
        "$keys/good.pub" --check "$oknek" >"$work/out" 2>&1 &&
        cmp -s "$work/packed/90-pack.yaml" "$work/local.yaml" && [ ! -e "$work/packed/fixtures" ]; then
        pass "build-rules: a signed pack is verified, unpacked and linted"
    else
        fail "build-rules: signed pack: $(cat "$work/out")"
    fi

    cp "$work/pack.tar.gz" "$work/tampered.tar.gz"
    printf 'x' >>"$work/tampered.tar.gz"
    cp "$work/pack.tar.gz.minisig" "$work/tampered.tar.gz.minisig"
    for refusal in \
        "tampered pack|$work/tampered.tar.gz|$work/tampered.tar.gz.minisig|$keys/good.pub|does not verify" \
        "wrong key|$work/pack.tar.gz|$work/pack.tar.gz.minisig|$keys/other.pub|does not verify" \
        "missing signature|$work/pack.tar.gz|$work/nothing.minisig|$keys/good.pub|has no signature"; do
        IFS='|' read -r what tarball signature key message <<<"$refusal"
        rm -rf "$work/refused"
        if build_rules "$work/refused" --pack "$tarball" "$signature" "$key" >"$work/out" 2>&1; then
            fail "build-rules: $what was accepted"
        elif grep -q "$message" "$work/out" && [ -z "$(ls -A "$work/refused" 2>/dev/null)" ]; then
            pass "build-rules: $what is refused before anything is unpacked"
        else
            fail "build-rules: $what: unexpected output: $(cat "$work/out")"
        fi
    done

    if build_rules "$work/clash" --pack "$work/pack.tar.gz" "$work/pack.tar.gz.minisig" "$keys/good.pub" \
        --pack "$work/pack2.tar.gz" "$work/pack2.tar.gz.minisig" "$keys/good.pub" >"$work/out" 2>&1; then
        fail "build-rules: two packs shipping one file were accepted"
    elif grep -q "two signed rule packs ship 90-pack.yaml" "$work/out"; then
        pass "build-rules: two packs shipping the same file are refused"
    else
        fail "build-rules: pack clash: unexpected output: $(cat "$work/out")"
    fi
fi

# --- module evaluation -------------------------------------------------------------------------
lib_tree=${OKNEK_NIXPKGS_LIB:-}
if [ -z "$lib_tree" ]; then
    skip "module evaluation needs OKNEK_NIXPKGS_LIB (a nixpkgs lib tree, e.g. nix-community/nixpkgs.lib)"
elif ! command -v nix-instantiate >/dev/null 2>&1; then
    fail "module evaluation needs nix-instantiate"
else
    # A nixpkgs checkout or nixpkgs.lib has lib/default.nix; a lib directory itself has default.nix.
    if [ -f "$lib_tree/lib/default.nix" ]; then
        lib_dir=$lib_tree/lib
    elif [ -f "$lib_tree/default.nix" ]; then
        lib_dir=$lib_tree
    else
        lib_dir=
        fail "OKNEK_NIXPKGS_LIB=$lib_tree holds neither lib/default.nix nor default.nix"
    fi
fi

if [ -n "${lib_dir:-}" ]; then
    lib_dir=$(cd "$lib_dir" && pwd -P)
    python=(python3 "$tests/check.py")
    # --readonly-mode: paths are hashed, never copied; the evaluation needs no writable store.
    evaluate() {
        local out=$1
        shift
        nix-instantiate --eval --strict --json --readonly-mode "$tests/eval.nix" \
            --arg nixpkgsLib "$lib_dir" "$@" >"$out" 2>"$out.err"
    }
    # Writes a case's config and rule set to DIR (shipped pack + rendered files), linted.
    materialise() {
        local report=$1 dir=$2 args=() name path
        mkdir -p "$dir/files"
        "${python[@]}" extract "$report" "$dir" >"$dir/file-list" || return 1
        while IFS= read -r name && IFS= read -r path; do
            args+=(--file "$name" "$path")
        done <"$dir/file-list"
        build_rules "$dir/rules" --shipped rules "${args[@]}" --check "$oknek"
    }

    if evaluate "$work/disabled.json" --arg case '{ }' &&
        python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); sys.exit(0 if r == {"assertions": [], "enabled": False} else 1)' "$work/disabled.json"; then
        pass "eval: the module does nothing unless enabled"
    else
        fail "eval: disabled module: $(cat "$work/disabled.json" "$work/disabled.json.err")"
    fi

    if evaluate "$work/defaults.json" --arg case '{ services.oknek.enable = true; }' &&
        materialise "$work/defaults.json" "$work/defaults" >"$work/out" 2>&1 &&
        "$oknekd" --check --config "$work/defaults/oknek.yaml" --rules-dir "$work/defaults/rules" >>"$work/out" 2>&1; then
        pass "eval: defaults render a config and rule set that oknekd --check accepts ($(tail -1 "$work/out" | cut -c1-60)…)"
    else
        fail "eval: defaults: $(cat "$work/defaults.json.err" "$work/out" 2>/dev/null)"
    fi

    full=$tests/full-example.nix
    if evaluate "$work/full.json" --arg case "$full" &&
        materialise "$work/full.json" "$work/full" >"$work/out" 2>&1 &&
        "$oknekd" --check --config "$work/full/oknek.yaml" --rules-dir "$work/full/rules" >>"$work/out" 2>&1; then
        pass "eval: full example: oknek rules check and oknekd --check accept the rendered files"
        if "${python[@]}" config-equal "$work/full/oknek.yaml" "$tests/handwritten/oknek.yaml"; then
            pass "eval: full example: rendered oknek.yaml equals the hand-written one"
        else
            fail "eval: full example: rendered oknek.yaml differs from handwritten/oknek.yaml"
        fi
        build_rules "$work/hand-rules" --shipped rules --file 80-local.yaml "$tests/handwritten/rules/80-local.yaml" \
            --file 85-team.yaml "$tests/handwritten/rules/85-team.yaml" --check "$oknek" >"$work/out" 2>&1
        rendered_digest=$(digest_of "$work/full/oknek.yaml" "$work/full/rules")
        hand_digest=$(digest_of "$tests/handwritten/oknek.yaml" "$work/hand-rules")
        "$oknek" rules list --json "$work/full/rules" >"$work/rendered-list.json" 2>&1
        "$oknek" rules list --json "$work/hand-rules" >"$work/hand-list.json" 2>&1
        # Rule by rule, as `oknek rules list` sees them, apart from the file they came from.
        if [ -n "$rendered_digest" ] && [ "$rendered_digest" = "$hand_digest" ] &&
            python3 -c '
import json, sys
def rules(path):
    return [{k: v for k, v in r.items() if k != "file"} for r in json.load(open(path))]
sys.exit(0 if rules(sys.argv[1]) == rules(sys.argv[2]) else 1)' "$work/rendered-list.json" "$work/hand-list.json"; then
            pass "eval: full example: rendered rules equal the hand-written ones (digest $rendered_digest)"
        else
            fail "eval: full example: rule set digest $rendered_digest differs from hand-written $hand_digest"
        fi
        if "${python[@]}" unit "$work/full.json" dist/systemd/oknekd.service dist/systemd/oknek-agent.conf aider; then
            pass "eval: full example: the unit mirrors dist/systemd/oknekd.service, reloads on policy, agent drop-in mirrors oknek-agent.conf"
        else
            fail "eval: full example: unit or drop-in"
        fi
    else
        fail "eval: full example: $(cat "$work/full.json.err" "$work/out" 2>/dev/null)"
    fi

    if evaluate "$work/changed.json" --arg case "$tests/full-example-changed.nix" &&
        "${python[@]}" reload-only "$work/full.json" "$work/changed.json"; then
        pass "eval: a rule or setting change changes only the reload triggers (switch reloads, no restart)"
    else
        fail "eval: policy change: $(cat "$work/changed.json.err" 2>/dev/null)"
    fi

    if evaluate "$work/imperative.json" --arg case \
        '{ services.oknek = { enable = true; manageRules = false; settings.paths.state_dir = "/srv/oknek"; }; }' &&
        python3 - "$work/imperative.json" <<'EOF'; then
import json, sys
r = json.load(open(sys.argv[1]))
unit = r["services"]["oknekd"]
assert r["assertions"] == [], r["assertions"]
assert "oknek/rules" not in r["etc"], r["etc"]
assert unit["reloadTriggers"] == [r["configFile"]], unit["reloadTriggers"]
assert '"rules_dir": "/var/lib/oknek/rules/active"' in r["configText"], r["configText"]
assert "StateDirectory" not in unit["serviceConfig"], unit["serviceConfig"]
assert "/srv/oknek" in unit["serviceConfig"]["ReadWritePaths"]
assert r["tmpfiles"] == ["d /srv/oknek 0700 root root -"], r["tmpfiles"]
EOF
        pass "eval: manageRules = false leaves /var/lib/oknek/rules/active to oknek update; state dir outside /var/lib"
    else
        fail "eval: manageRules = false: $(cat "$work/imperative.json.err" 2>/dev/null)"
    fi

    # The flake's outputs, evaluated with nixpkgs' lib standing in for nixpkgs: their names and
    # the wiring of nixosModules.default. Building them needs nixpkgs (docs/nixos.md).
    if nix-instantiate --eval --strict --json --readonly-mode --arg nixpkgsLib "$lib_dir" -E '
        { nixpkgsLib }:
        let
          lib = import nixpkgsLib;
          flake = import ./flake.nix;
          self = flake.outputs { inherit self; nixpkgs = { inherit lib; legacyPackages.x86_64-linux = { }; }; };
          names = builtins.mapAttrs (_: v: builtins.attrNames (v.x86_64-linux or v));
          module = self.nixosModules.default {
            pkgs.stdenv.hostPlatform.system = "x86_64-linux";
          };
        in
        {
          outputs = names (builtins.removeAttrs self [ "formatter" ]);
          imports = map toString module.imports;
          setsPackage = module.services.oknek.package._type == "override";
          lockedInput = (lib.importJSON ./flake.lock).nodes.nixpkgs.original.ref;
          input = flake.inputs.nixpkgs.url;
        }' >"$work/flake.json" 2>"$work/flake.err" &&
        python3 - "$work/flake.json" "$repo" <<'EOF2'; then
import json, sys
r = json.load(open(sys.argv[1]))
want = {
    "packages": ["default", "oknek"],
    "overlays": ["default"],
    "nixosModules": ["default"],
    "devShells": ["default"],
    "checks": ["module-eval", "nixos-vm", "oknek", "unit-tests"],
}
assert r["outputs"] == want, r["outputs"]
assert r["imports"] == [sys.argv[2] + "/nixos-module"], r["imports"]
assert r["setsPackage"], "nixosModules.default must set services.oknek.package with mkDefault"
assert r["input"].endswith("/" + r["lockedInput"]), (r["input"], r["lockedInput"])
EOF2
        pass "flake: outputs $(python3 -c 'import json,sys; print(" ".join(sorted(json.load(open(sys.argv[1]))["outputs"])))' "$work/flake.json"), locked input matches"
    else
        fail "flake outputs: $(cat "$work/flake.err")"
    fi

    if evaluate "$work/assertions.json" --arg assertionCases "$tests/assertion-cases.nix"; then
        count=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))))' "$work/assertions.json")
        if "${python[@]}" assertions "$work/assertions.json"; then
            pass "eval: each of $count contradictory configurations is refused with its message"
        else
            fail "eval: assertions"
        fi
    else
        fail "eval: assertions: $(cat "$work/assertions.json.err")"
    fi
fi

echo
echo "nixos-module: $passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
