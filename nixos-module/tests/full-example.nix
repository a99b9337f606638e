# The complete example of docs/nixos.md: a host with three agents, local rules in all three
# forms, and the settings most hosts change. The tests evaluate it and check that oknek accepts
# what it renders and that it equals the hand-written files in handwritten/.
{ config, ... }:

{
  users.users.dev = {
    isNormalUser = true;
    uid = 1000;
  };
  users.groups.oknek.gid = 990;

  # An agent running as a service: placed under oknek by the module.
  systemd.services.aider = {
    wantedBy = [ "multi-user.target" ];
    serviceConfig.ExecStart = "/opt/aider/bin/aider --watch /srv/repo";
  };

  services.oknek = {
    enable = true;

    settings = {
      fail_mode = "closed";
      decision_timeout_ms = 300;
      # Members of this group may run `oknek status`, `oknek reload`, `oknek allow PID`.
      control_gid = config.users.groups.oknek.gid;
      # Refuse to start without fanotify; the other tiers are used when the kernel offers them.
      tiers.fanotify = "on";
      run_agents = "declared";
    };

    # Where agents' model calls go; the shipped R6 rules judge them.
    providers = {
      ollama = {
        kind = "local";
        api = "ollama";
        endpoints = [ "127.0.0.1:11434" ];
      };
      openai = {
        kind = "cloud";
        api = "openai";
        endpoints = [ "api.openai.com:443" ];
      };
    };

    agents = {
      aider = {
        units = [ "aider.service" ];
        preload = true;
      };
      claude-code = {
        users = [ "dev" ];
        executables = [ "/home/dev/.local/bin/claude" ];
      };
      ci-runner.cgroups = [ "/system.slice/ci-runner.slice" ];
    };

    rules = {
      # Rules as Nix values.
      "80-local" = {
        lists.deploy_keys = [
          "/srv/deploy/keys/"
          "/etc/deploy/"
        ];
        rules = [
          {
            id = "LOCAL.deploy-keys";
            title = "Agent reads the deploy keys";
            description = "Deploy keys give push access to production; no agent needs them.";
            kind = "open";
            match.path.prefix = "$deploy_keys";
            action = "block";
            severity = "critical";
            tags = [ "maturity:stable" ];
          }
          {
            id = "LOCAL.db-port";
            title = "Agent connects to the production database";
            kind = "connect";
            agents = [
              "aider"
              "claude-code"
            ];
            match = {
              addr = "10.20.0.0/16";
              port = 5432;
            };
            action = "block";
            severity = "high";
          }
        ];
      };

      # Rules as YAML text.
      "85-team".text = ''
        oknek_rules: 1
        rules:
          - id: TEAM.kubectl
            title: Agent runs kubectl against a cluster
            kind: exec
            match:
              path: { basename: kubectl }
            action: warn
            severity: medium
      '';
    };
  };
}
