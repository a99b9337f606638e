# The full example after a policy change: one rule edited, one setting changed. Switching to it
# must reload oknekd, not restart it (only the unit's reload triggers may differ).
{ lib, ... }:

{
  imports = [ ./full-example.nix ];
  services.oknek.settings.decision_timeout_ms = lib.mkForce 250;
  services.oknek.rules."85-team".text = lib.mkForce ''
    oknek_rules: 1
    rules:
      - id: TEAM.kubectl
        title: Agent runs kubectl against a cluster
        kind: exec
        match:
          path: { basename: kubectl }
        action: block
        severity: high
  '';
}
