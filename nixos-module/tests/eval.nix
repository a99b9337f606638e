# Evaluates services.oknek with lib.evalModules against a nixpkgs lib tree, the NixOS stand-in
# (nixos-stub.nix) and the stub package set (stub-pkgs.nix), and returns what the tests check as
# JSON. A real NixOS evaluation uses the full option set and real derivations; the module's own
# logic (options, rendering, assertions, unit, drop-ins) is the same code in both.
#
#   nix-instantiate --eval --strict --json --readonly-mode nixos-module/tests/eval.nix \
#     --arg nixpkgsLib /path/to/nixpkgs/lib --arg case ./nixos-module/tests/full-example.nix
#
# With `assertionCases` (an attribute set of { expect, config }) it instead returns, per case,
# the expected message and the messages of the assertions that failed.
{
  nixpkgsLib,
  case ? { },
  assertionCases ? null,
}:

let
  lib = import nixpkgsLib;
  pkgs = import ./stub-pkgs.nix { inherit lib; };

  evaluate =
    module:
    lib.evalModules {
      modules = [
        ./nixos-stub.nix
        ../default.nix
        { _module.args.pkgs = pkgs; }
        module
      ];
    };

  failedAssertions =
    config: map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);

  # Paths are reported as strings so nothing is copied to the store.
  plain = file: if file ? source then { source = toString file.source; } else file;

  report =
    config:
    let
      cfg = config.services.oknek;
      failed = failedAssertions config;
    in
    if failed != [ ] || !cfg.enable then
      {
        assertions = failed;
        enabled = cfg.enable;
      }
    else
      {
        assertions = [ ];
        enabled = true;
        configText = cfg.generated.configText;
        ruleFiles = lib.mapAttrs (_: plain) cfg.generated.ruleFiles;
        rulesDir = cfg.generated.rulesDir;
        configFile = cfg.generated.config;
        etc = lib.mapAttrs (
          _: entry: if entry ? source then toString entry.source else { inherit (entry) text; }
        ) config.environment.etc;
        services = config.systemd.services;
        tmpfiles = config.systemd.tmpfiles.rules;
        systemPackages = map toString config.environment.systemPackages;
      };
in
if assertionCases == null then
  report (evaluate case).config
else
  lib.mapAttrs (_: c: {
    inherit (c) expect;
    failed = failedAssertions (evaluate c.config).config;
  }) (import assertionCases)
