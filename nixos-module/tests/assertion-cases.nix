# One case per assertion of services.oknek: the configuration that must be refused, and a part of
# the message that must explain why. eval.nix evaluates each; run.sh checks that the expected
# message, and only it, is reported.
let
  enabled = config: {
    services.oknek = {
      enable = true;
    }
    // config;
  };
in
{
  rules-dir-with-managed-rules = {
    expect = "the rules are managed by NixOS";
    config = enabled { settings.paths.rules_dir = "/srv/rules"; };
  };
  rules-without-management = {
    expect = "manageRules is false";
    config = enabled {
      manageRules = false;
      rules."80-local".text = "oknek_rules: 1\nrules: []\n";
    };
  };
  state-dir-relative = {
    expect = "state_dir must be an absolute path outside the Nix store";
    config = enabled { settings.paths.state_dir = "var/oknek"; };
  };
  state-dir-in-store = {
    expect = "state_dir must be an absolute path outside the Nix store";
    config = enabled { settings.paths.state_dir = "${builtins.storeDir}/oknek-state"; };
  };
  runtime-dir-outside-run = {
    expect = "runtime_dir must be below /run";
    config = enabled { settings.paths.runtime_dir = "/var/run-oknek"; };
  };
  every-tier-off = {
    expect = "turns every enforcement tier off";
    config = enabled {
      settings.tiers = {
        ebpf = "off";
        fanotify = "off";
        seccomp = "off";
        preload = "off";
      };
    };
  };
  run-agents-declared-without-agents = {
    expect = "none is declared";
    config = enabled { settings.run_agents = "declared"; };
  };
  pack-with-two-keys = {
    expect = "sets both publicKey and publicKeyFile";
    config = enabled {
      rulePacks = [
        {
          src = "/srv/packs/oknek-rules-0.2.0.tar.gz";
          publicKey = "RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3";
          publicKeyFile = "/srv/packs/release.pub";
        }
      ];
    };
  };
  agent-bad-name = {
    expect = "the agent name must be 1-64 letters";
    config = enabled { agents."my agent".uids = [ 1001 ]; };
  };
  agent-selects-nothing = {
    expect = "selects no process";
    config = enabled { agents.aider = { }; };
  };
  agent-preload-without-service = {
    expect = "preload only applies to the agent's systemd services";
    config = enabled {
      agents.aider = {
        uids = [ 1001 ];
        preload = true;
      };
    };
  };
  agent-preload-tier-off = {
    expect = "tiers.preload is \"off\"";
    config = enabled {
      settings.tiers.preload = "off";
      agents.aider = {
        units = [ "aider.service" ];
        preload = true;
      };
    };
  };
  agent-declared-twice = {
    expect = "is also declared in services.oknek.settings.agents";
    config = enabled {
      settings.agents = [
        {
          name = "aider";
          uid = [ 1001 ];
        }
      ];
      agents.aider.uids = [ 1001 ];
    };
  };
  agent-unit-without-suffix = {
    expect = "needs its unit type suffix";
    config = enabled { agents.aider.units = [ "aider" ]; };
  };
  agent-unknown-user = {
    expect = "is not declared in users.users";
    config = enabled { agents.aider.users = [ "nobody-here" ]; };
  };
  agent-user-without-uid = {
    expect = "uid is not set";
    config = {
      imports = [ (enabled { agents.aider.users = [ "dev" ]; }) ];
      users.users.dev.isNormalUser = true;
    };
  };
  rule-file-two-forms = {
    expect = "several are set";
    config = enabled {
      rules."80-local" = {
        text = "oknek_rules: 1\nrules: []\n";
        source = "/srv/rules/80-local.yaml";
      };
    };
  };
  rule-file-empty = {
    expect = "none is set";
    config = enabled { rules."80-local" = { }; };
  };
  rule-file-hidden-name = {
    expect = "is not a usable rule file name";
    config = enabled { rules.".hidden".text = "oknek_rules: 1\nrules: []\n"; };
  };
  model-policy-unsupported = {
    expect = "services.oknek.modelPolicy is not supported by this oknek version";
    config = enabled { modelPolicy.default = "deny"; };
  };
  webhooks-unsupported = {
    expect = "services.oknek.webhooks is not supported by this oknek version";
    config = enabled { webhooks.soc.url = "https://soc.example/hook"; };
  };
}
