# services.oknek: oknekd, its agents and its rules as part of the NixOS configuration.
#
# Configuration and rules are files in /etc/oknek that the unit refers to by their stable paths,
# never by store path. A new generation therefore changes only the unit's reload triggers, and
# `nixos-rebuild switch` reloads the daemon (SIGHUP) instead of restarting it: enforcement never
# stops for a policy change. Both are checked by oknek's own tools when the system is built, so a
# broken rule set fails the build instead of being rejected by a running daemon.
{
  config,
  lib,
  pkgs,
  ...
}:

let
  inherit (lib)
    attrNames
    concatLists
    concatMapStringsSep
    concatStringsSep
    filter
    filterAttrs
    hasPrefix
    hasSuffix
    isAttrs
    isList
    literalExpression
    mapAttrsToList
    mkDefault
    mkEnableOption
    mkIf
    mkMerge
    mkOption
    optional
    optionalAttrs
    optionals
    removePrefix
    removeSuffix
    types
    ;

  cfg = config.services.oknek;

  # Where the module installs what it manages; the unit and the config refer to these paths only.
  configPath = "/etc/oknek/oknek.yaml";
  managedRulesDir = "/etc/oknek/rules";
  imperativeRulesDir = "/var/lib/oknek/rules/active";

  # A JSON value. YAML is a superset of JSON, so this is what the config and rule files hold.
  jsonValue =
    with types;
    nullOr (oneOf [
      bool
      int
      float
      str
      path
      (attrsOf jsonValue)
      (listOf jsonValue)
    ])
    // {
      description = "JSON value";
    };

  tierSwitch = types.enum [
    "auto"
    "on"
    "off"
  ];

  # Renders a value as indented JSON (valid YAML): one key per line, so the daemon's
  # file:line:column messages point at something a person can find.
  renderValue =
    indent: value:
    let
      inner = indent + "  ";
    in
    if isAttrs value && value != { } then
      "{\n"
      + concatMapStringsSep ",\n" (
        name: inner + builtins.toJSON name + ": " + renderValue inner value.${name}
      ) (attrNames value)
      + "\n"
      + indent
      + "}"
    else if isList value && value != [ ] then
      "[\n" + concatMapStringsSep ",\n" (item: inner + renderValue inner item) value + "\n" + indent + "]"
    else
      builtins.toJSON value;

  # Unset typed options are null: they are left out so the daemon's defaults apply.
  withoutNulls = lib.filterAttrsRecursive (_: v: v != null);

  renderYaml = header: value: "# ${header}\n" + renderValue "" value + "\n";

  generatedHeader = "Generated from the NixOS option services.oknek; change the system configuration, not this file.";

  # The agents of services.oknek.agents, in the daemon's schema.
  agentEntries = mapAttrsToList (
    name: agent:
    {
      inherit name;
    }
    // optionalAttrs (agent.executables != [ ]) { exe = agent.executables; }
    // optionalAttrs (agent.executableHashes != [ ]) { exe_sha256 = agent.executableHashes; }
    // optionalAttrs (agent.units != [ ]) { unit = agent.units; }
    // optionalAttrs (agent.cgroups != [ ]) { cgroup = agent.cgroups; }
    // optionalAttrs (resolvedUids agent != [ ]) { uid = resolvedUids agent; }
  ) cfg.agents;

  # Numeric uids only: the static daemon does no NSS lookups, so user names are resolved here.
  userUid = user: (config.users.users.${user} or { }).uid or null;
  resolvedUids =
    agent: agent.uids ++ filter (uid: uid != null) (map userUid agent.users);

  # services.oknek.providers as the daemon's `providers:` list (by name, in name order).
  providerEntries = lib.mapAttrsToList (
    name: provider:
    {
      inherit name;
      inherit (provider) kind api endpoints;
    }
    // optionalAttrs (provider.tls != null) { inherit (provider) tls; }
    // optionalAttrs (provider.viaGateway != null) { via_gateway = provider.viaGateway; }
  ) cfg.providers;

  effectiveSettings = withoutNulls (
    cfg.settings
    // {
      agents = cfg.settings.agents ++ agentEntries;
    }
    // optionalAttrs (providerEntries != [ ]) {
      providers = (cfg.settings.providers or [ ]) ++ providerEntries;
    }
  );

  configText = renderYaml generatedHeader effectiveSettings;

  # Rule files named by their attribute: "80-local" → 80-local.yaml. The daemon reads a directory's
  # files in name order, so the name decides where a file sits relative to the shipped pack.
  ruleFileName =
    name: if hasSuffix ".yaml" name || hasSuffix ".yml" name then name else "${name}.yaml";

  enabledRules = filterAttrs (_: rule: rule.enable) cfg.rules;

  isStructured = rule: rule.rules != [ ] || rule.lists != { };

  # Each managed rule file as either its text or the path of its source.
  ruleFiles = lib.mapAttrs' (
    name: rule:
    lib.nameValuePair (ruleFileName name) (
      if rule.source != null then
        { source = rule.source; }
      else if rule.text != null then
        { text = rule.text; }
      else
        {
          text = renderYaml generatedHeader (
            {
              oknek_rules = 1;
              inherit (rule) rules;
            }
            // optionalAttrs (rule.lists != { }) { inherit (rule) lists; }
          );
        }
    )
  ) enabledRules;

  ruleFileSource =
    fileName: file:
    if file ? source then file.source else pkgs.writeText "oknek-rule-${fileName}" file.text;

  # The rule set the daemon reads: the shipped pack, then verified signed packs, then the files of
  # services.oknek.rules; a later layer replaces a same-named file of an earlier one.
  rulesDir =
    pkgs.runCommand "oknek-rules"
      {
        nativeBuildInputs = optional (cfg.rulePacks != [ ]) pkgs.minisign;
        preferLocalBuild = true;
      }
      (
        concatStringsSep " " (
          [
            "bash ${./build-rules.sh} \"$out\""
          ]
          ++ optional cfg.includeDefaultRules "--shipped ${cfg.package}/share/oknek/rules"
          ++ map (
            pack:
            "--pack ${pack.src} ${pack.signature} ${
              if pack.publicKeyFile != null then
                "${pack.publicKeyFile}"
              else if pack.publicKey != null then
                pkgs.writeText "oknek-rule-pack.pub" "untrusted comment: minisign public key\n${pack.publicKey}\n"
              else
                "${cfg.package}/share/oknek/release.pub"
            }"
          ) cfg.rulePacks
          ++ mapAttrsToList (fileName: file: "--file ${fileName} ${ruleFileSource fileName file}") ruleFiles
          ++ optional cfg.checkRules "--check ${cfg.package}/bin/oknek"
        )
        + "\n"
      );

  # The config as installed: checked with `oknekd --check` against the rules it will run with.
  configFile =
    let
      unchecked = pkgs.writeText "oknek.yaml" configText;
      checkRulesDir = if cfg.manageRules then rulesDir else "$(mktemp -d)";
    in
    if cfg.checkConfig then
      pkgs.runCommand "oknek.yaml" { preferLocalBuild = true; } ''
        ${cfg.package}/bin/oknekd --check --config ${unchecked} --rules-dir ${checkRulesDir}
        cp ${unchecked} "$out"
      ''
    else
      unchecked;

  preloadLibrary = "${cfg.package}/lib/liboknek_preload.so";

  # The drop-ins that put an agent's systemd services under oknek.
  agentServices = concatLists (
    mapAttrsToList (
      _: agent:
      map (unit: {
        name = removeSuffix ".service" unit;
        inherit (agent) preload;
      }) (filter (hasSuffix ".service") agent.units)
    ) cfg.agents
  );

  validAgentName = name: builtins.match "[A-Za-z0-9._-]{1,64}" name != null;
  validRuleFileName =
    fileName: builtins.match "[A-Za-z0-9_-][A-Za-z0-9._-]*" fileName != null;

  settingsAgentNames = map (a: a.name or "") cfg.settings.agents;

  agentAssertions = concatLists (
    mapAttrsToList (
      name: agent:
      let
        where = "services.oknek.agents.${name}";
      in
      [
        {
          assertion = validAgentName name;
          message = "${where}: the agent name must be 1-64 letters, digits, '-', '_' or '.' (it appears in logs and evidence).";
        }
        {
          assertion =
            agent.executables != [ ]
            || agent.executableHashes != [ ]
            || agent.units != [ ]
            || agent.cgroups != [ ]
            || agent.uids != [ ]
            || agent.users != [ ];
          message = "${where} selects no process: give at least one of executables, executableHashes, units, cgroups, uids or users.";
        }
        {
          assertion = !(agent.preload && filter (hasSuffix ".service") agent.units == [ ]);
          message = "${where}.preload only applies to the agent's systemd services, and units lists no *.service unit; add the service or use `oknek run` / LD_PRELOAD yourself.";
        }
        {
          assertion = !(agent.preload && cfg.settings.tiers.preload == "off");
          message = "${where}.preload loads the preload shim into the agent's services, but services.oknek.settings.tiers.preload is \"off\", so the daemon would ignore it; enable the tier or drop preload.";
        }
        {
          assertion = !(builtins.elem name settingsAgentNames);
          message = "${where} is also declared in services.oknek.settings.agents; declare each agent once (prefer services.oknek.agents).";
        }
      ]
      ++ map (unit: {
        assertion = lib.hasInfix "." unit;
        message = "${where}.units: \"${unit}\" needs its unit type suffix, e.g. \"${unit}.service\".";
      }) agent.units
      ++ map (user: {
        assertion = config.users.users ? ${user};
        message = "${where}.users: user \"${user}\" is not declared in users.users; oknekd needs numeric uids, so list it in uids instead.";
      }) agent.users
      ++ map (user: {
        assertion = !(config.users.users ? ${user}) || userUid user != null;
        message = "${where}.users: users.users.${user}.uid is not set; oknekd matches numeric uids and does no NSS lookups, so give that user a fixed uid.";
      }) agent.users
    ) cfg.agents
  );

  ruleAssertions = concatLists (
    mapAttrsToList (
      name: rule:
      let
        where = "services.oknek.rules.${name}";
        given = filter (x: x) [
          (isStructured rule)
          (rule.text != null)
          (rule.source != null)
        ];
      in
      [
        {
          assertion = builtins.length given == 1;
          message = "${where}: give exactly one of `rules`/`lists` (structured), `text` or `source`; ${
            if given == [ ] then "none is set" else "several are set"
          }.";
        }
        {
          assertion = validRuleFileName (ruleFileName name);
          message = "${where}: \"${ruleFileName name}\" is not a usable rule file name (letters, digits, '.', '_', '-'; not starting with '.', which oknekd skips).";
        }
      ]
    ) enabledRules
  );

  unsupportedAssertions =
    map
      (
        { option, set }:
        {
          assertion = !set;
          message = "services.oknek.${option} is not supported by this oknek version. Model-call policy is the rule language's: the R6 rules (rules/60-r6-models.yaml), the lists they use, and rules of your own in services.oknek.rules.";
        }
      )
      [
        {
          option = "modelPolicy";
          set = cfg.modelPolicy != { };
        }
        {
          option = "webhooks";
          set = cfg.webhooks != { };
        }
      ];

  tierNames = [
    "ebpf"
    "fanotify"
    "seccomp"
    "preload"
  ];

  settingsAssertions =
    let
      inherit (cfg.settings) paths;
    in
    [
      {
        assertion = !cfg.manageRules || paths.rules_dir == managedRulesDir;
        message = "services.oknek.settings.paths.rules_dir is \"${paths.rules_dir}\", but the rules are managed by NixOS (services.oknek.manageRules = true) and installed to ${managedRulesDir}. Leave rules_dir unset, or set manageRules = false to manage ${imperativeRulesDir} with `oknek update`.";
      }
      {
        assertion = cfg.manageRules || (enabledRules == { } && cfg.rulePacks == [ ]);
        message = "services.oknek.manageRules is false (rules are managed with `oknek update` in ${paths.rules_dir}), yet services.oknek.rules or services.oknek.rulePacks are set and would be ignored. Set manageRules = true or remove them.";
      }
      {
        assertion = hasPrefix "/" paths.state_dir && !(hasPrefix builtins.storeDir paths.state_dir);
        message = "services.oknek.settings.paths.state_dir must be an absolute path outside the Nix store: it holds the host's evidence key and journal (got \"${paths.state_dir}\").";
      }
      {
        assertion = builtins.match "/run/[^/]+(/.*)?" paths.runtime_dir != null;
        message = "services.oknek.settings.paths.runtime_dir must be below /run (systemd creates it as the unit's RuntimeDirectory); got \"${paths.runtime_dir}\".";
      }
      {
        assertion = !(lib.all (tier: cfg.settings.tiers.${tier} == "off") tierNames);
        message = "services.oknek.settings.tiers turns every enforcement tier off: oknekd would judge nothing. Leave at least one tier on \"auto\" or \"on\".";
      }
      {
        assertion = !(cfg.settings.run_agents == "declared" && cfg.agents == { } && cfg.settings.agents == [ ]);
        message = "services.oknek.settings.run_agents = \"declared\" allows `oknek run --agent NAME` only for declared agents, and none is declared; declare agents in services.oknek.agents or use \"any\".";
      }
    ]
    ++ map (pack: {
      assertion = pack.publicKey == null || pack.publicKeyFile == null;
      message = "services.oknek.rulePacks: the pack ${toString pack.src} sets both publicKey and publicKeyFile; give the one key it must be signed with.";
    }) cfg.rulePacks;

  stateDirectory =
    if hasPrefix "/var/lib/" cfg.settings.paths.state_dir then
      removePrefix "/var/lib/" cfg.settings.paths.state_dir
    else
      null;
  runtimeDirectory = removePrefix "/run/" cfg.settings.paths.runtime_dir;

  settingsModule = {
    freeformType = types.attrsOf jsonValue;
    options = {
      oknek_config = mkOption {
        type = types.int;
        default = 1;
        readOnly = true;
        description = "Version of the configuration schema.";
      };
      paths = mkOption {
        default = { };
        description = "Where oknekd keeps its rules, evidence and sockets.";
        type = types.submodule {
          freeformType = types.attrsOf jsonValue;
          options = {
            rules_dir = mkOption {
              type = types.str;
              default = if cfg.manageRules then managedRulesDir else imperativeRulesDir;
              defaultText = literalExpression ''
                if config.services.oknek.manageRules then "${managedRulesDir}" else "${imperativeRulesDir}"'';
              description = "The rules directory oknekd reads. With `manageRules` it is the NixOS-built rule set and must stay at its default.";
            };
            state_dir = mkOption {
              type = types.str;
              default = "/var/lib/oknek";
              description = "Evidence journal, SQLite index and the host's Ed25519 key (created by oknekd on first start, mode 0700, never in the Nix store).";
            };
            runtime_dir = mkOption {
              type = types.str;
              default = "/run/oknek";
              description = "Sockets of the daemon (control.sock, oknek.sock). The `oknek` CLI looks in /run/oknek unless given `--runtime-dir`.";
            };
            bpf_pin_dir = mkOption {
              type = types.nullOr types.str;
              default = null;
              description = "Where the eBPF probes are pinned (a directory in /sys/fs/bpf); null keeps the daemon's default, /sys/fs/bpf/oknek.";
            };
          };
        };
      };
      fail_mode = mkOption {
        type = types.enum [
          "open"
          "closed"
        ];
        default = "closed";
        description = "What a waiting tier does when no verdict can be reached in time: `closed` refuses the action, `open` lets it through.";
      };
      decision_timeout_ms = mkOption {
        type = types.ints.between 1 10000;
        default = 200;
        description = "How long a waiting tier (the preload shim) waits for a verdict, in milliseconds.";
      };
      control_gid = mkOption {
        type = types.ints.unsigned;
        default = 0;
        example = literalExpression "config.users.groups.oknek.gid";
        description = "Numeric gid whose members may use the control socket (`oknek status`, `reload`, `allow`) besides root.";
      };
      tiers = mkOption {
        default = { };
        description = "Enforcement tiers: `auto` uses a tier when the kernel offers it, `on` makes the daemon refuse to start without it, `off` disables it.";
        type = types.submodule {
          options = lib.genAttrs tierNames (
            tier:
            mkOption {
              type = types.nullOr tierSwitch;
              default = null;
              description = "The ${tier} tier; null leaves it to the daemon (`auto`).";
            }
          );
        };
      };
      run_agents = mkOption {
        type = types.enum [
          "any"
          "declared"
        ];
        default = "any";
        description = "Agent names `oknek run --agent NAME` may use: any name, or only declared agents.";
      };
      seccomp_allow_racy = mkOption {
        type = types.bool;
        default = false;
        description = "Let `oknek run` pass exec and unix-socket calls whose arguments another thread could change after they were judged (see docs/adr/0003).";
      };
      agents = mkOption {
        type = types.listOf (types.attrsOf jsonValue);
        default = [ ];
        description = "Agents in the daemon's own schema. Prefer services.oknek.agents, which also places agent services under oknek.";
      };
    };
  };

  agentModule =
    { name, ... }:
    {
      options = {
        executables = mkOption {
          type = types.listOf (types.strMatching "/.*");
          default = [ ];
          example = literalExpression ''[ "''${pkgs.aider-chat}/bin/aider" "/home/dev/.local/bin/claude" ]'';
          description = "Executable paths: every process running one of them, and its descendants, is the agent.";
        };
        executableHashes = mkOption {
          type = types.listOf (types.strMatching "[0-9a-fA-F]{64}");
          default = [ ];
          description = "SHA-256 digests of executables: a renamed or copied binary is still the agent.";
        };
        units = mkOption {
          type = types.listOf types.str;
          default = [ ];
          example = [ "aider.service" ];
          description = ''
            systemd units whose processes are the agent. For each `*.service` unit the module adds
            `Wants=` and `After=oknekd.service`, so the agent starts after enforcement is armed.
          '';
        };
        cgroups = mkOption {
          type = types.listOf (types.strMatching "/.*");
          default = [ ];
          example = [ "/system.slice/aider.service" ];
          description = "cgroup v2 paths (relative to the cgroup2 mount): every process below them is the agent.";
        };
        uids = mkOption {
          type = types.listOf types.ints.unsigned;
          default = [ ];
          description = "Numeric uids: every process of these users is the agent.";
        };
        users = mkOption {
          type = types.listOf types.str;
          default = [ ];
          example = [ "agent" ];
          description = "User names from users.users, resolved to their fixed uids at build time (oknekd does no NSS lookups).";
        };
        preload = mkOption {
          type = types.bool;
          default = false;
          description = "Also set LD_PRELOAD to oknek's preload shim in the agent's `*.service` units: the fallback tier for kernels without BPF LSM or fanotify coverage.";
        };
      };
    };

  ruleModule = {
    options = {
      enable = mkOption {
        type = types.bool;
        default = true;
        description = "Whether to install this rule file.";
      };
      rules = mkOption {
        type = types.listOf (types.attrsOf jsonValue);
        default = [ ];
        description = "Rules as Nix values, rendered to the file's `rules:` list (see rules/README.md for the language).";
      };
      lists = mkOption {
        type = types.attrsOf (types.listOf jsonValue);
        default = { };
        description = "Named lists of this file, rendered to its `lists:` mapping.";
      };
      text = mkOption {
        type = types.nullOr types.lines;
        default = null;
        description = "The rule file as YAML text.";
      };
      source = mkOption {
        type = types.nullOr types.path;
        default = null;
        description = "A rule file to install as it is.";
      };
    };
  };

  rulePackModule =
    { config, ... }:
    {
      options = {
        src = mkOption {
          type = types.path;
          description = "The rule pack: a `.tar.gz` as published with oknek releases (fetch it with `pkgs.fetchurl` and a hash).";
        };
        signature = mkOption {
          type = types.path;
          # A path literal keeps its directory (./pack.tar.gz → ./pack.tar.gz.minisig); a string such
          # as "''${dir}/pack.tar.gz" does too.
          default = if builtins.isPath config.src then config.src + ".minisig" else "${config.src}.minisig";
          defaultText = literalExpression "src + \".minisig\"";
          description = "The pack's minisign signature; give it explicitly when `src` is a fetched file.";
        };
        publicKey = mkOption {
          type = types.nullOr types.str;
          default = null;
          example = "RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3";
          description = "The minisign public key (base64) the pack must be signed with.";
        };
        publicKeyFile = mkOption {
          type = types.nullOr types.path;
          default = null;
          description = "A minisign public key file the pack must be signed with. With neither this nor `publicKey`, the oknek release key shipped in the package (share/oknek/release.pub) is used.";
        };
      };
    };
in
{
  options.services.oknek = {
    enable = mkEnableOption "oknekd, which judges every exec, open, connect, send and watch of AI agent processes before it happens and signs the evidence";

    package = lib.mkPackageOption pkgs "oknek" { };

    settings = mkOption {
      type = types.submodule settingsModule;
      default = { };
      description = ''
        Contents of ${configPath}. Keys not declared here are passed through unchanged, and
        `oknekd --check` rejects unknown ones when the system is built.
      '';
    };

    manageRules = mkOption {
      type = types.bool;
      default = true;
      description = ''
        Build the rule set from `includeDefaultRules`, `rulePacks` and `rules`, check it with
        `oknek rules check`, and install it at ${managedRulesDir}. Set to false to manage
        ${imperativeRulesDir} with `oknek update` instead.
      '';
    };

    includeDefaultRules = mkOption {
      type = types.bool;
      default = true;
      description = "Install the rule pack shipped with the package (R1–R7). A file in `rules` with the same name replaces a shipped file (e.g. `rules.\"00-lists\"` to tune the lists).";
    };

    rules = mkOption {
      type = types.attrsOf (types.submodule ruleModule);
      default = { };
      example = literalExpression ''
        {
          "80-local".rules = [
            {
              id = "LOCAL.deploy-keys";
              title = "Agent reads the deploy keys";
              kind = "open";
              match.path.prefix = "/srv/deploy/keys/";
              action = "block";
              severity = "high";
            }
          ];
          "85-team".source = ./oknek/85-team.yaml;
        }
      '';
      description = ''
        Rule files, named by their attribute (`"80-local"` → `80-local.yaml`; files are read in
        name order). Each gives exactly one of: `rules`/`lists` as Nix values, `text`, or `source`.
      '';
    };

    rulePacks = mkOption {
      type = types.listOf (types.submodule rulePackModule);
      default = [ ];
      description = ''
        Signed rule packs, verified with minisign while the system is built: the Nix store only
        ever holds rules whose signature checked out. Their files replace same-named shipped
        files; two packs may not ship the same file.
      '';
    };

    agents = mkOption {
      type = types.attrsOf (types.submodule agentModule);
      default = { };
      example = literalExpression ''
        {
          aider = { units = [ "aider.service" ]; preload = true; };
          claude-code = { users = [ "dev" ]; executables = [ "/home/dev/.local/bin/claude" ]; };
        }
      '';
      description = "Agents: named sets of processes whose actions oknekd judges. Processes of no agent are never judged.";
    };

    providers = mkOption {
      type = types.attrsOf (
        types.submodule {
          options = {
            kind = mkOption {
              type = types.enum [
                "cloud"
                "local"
              ];
              description = "`cloud`: reached over TLS by host name; `local`: an inference server on this host or network.";
            };
            api = mkOption {
              type = types.enum [
                "openai"
                "anthropic"
                "google"
                "bedrock"
                "ollama"
              ];
              description = "The API the provider speaks.";
            };
            endpoints = mkOption {
              type = types.listOf types.str;
              example = [
                "127.0.0.1:11434"
                "unix:/run/ollama/ollama.sock"
              ];
              description = "Where the provider listens: `host:port` or `address:port` for cloud providers, `address:port` or `unix:PATH` for local ones.";
            };
            tls = mkOption {
              type = types.nullOr types.bool;
              default = null;
              description = "Whether calls use TLS; default (null): cloud yes, local no.";
            };
            viaGateway = mkOption {
              type = types.nullOr types.bool;
              default = null;
              description = "Whether agents reach this provider through the model gateway only (their direct connects refused in the kernel); default (null): cloud providers yes when `settings.gateway` is set, local ones no.";
            };
          };
        }
      );
      default = { };
      example = literalExpression ''
        {
          openai = { kind = "cloud"; api = "openai"; endpoints = [ "api.openai.com:443" ]; };
          ollama = { kind = "local"; api = "ollama"; endpoints = [ "127.0.0.1:11434" ]; };
        }
      '';
      description = "Model providers, by name: a connect of an agent to one of their addresses is a `model_call`, judged by the R6 rules and yours (docs/model-calls.md). Rendered into the daemon's `providers:`; the gateway's own settings go in `settings.gateway`.";
    };

    modelPolicy = mkOption {
      type = types.attrsOf jsonValue;
      default = { };
      description = "Model-call policy for the model gateway. Not supported by this oknek version; use the R6 rules and their lists (`model_providers_allowed`, `models_allowed`).";
    };

    webhooks = mkOption {
      type = types.attrsOf (
        types.submodule {
          options = {
            url = mkOption {
              type = types.str;
              description = "Where decisions are posted.";
            };
            minSeverity = mkOption {
              type = types.enum [
                "info"
                "low"
                "medium"
                "high"
                "critical"
              ];
              default = "high";
              description = "The least severe decision that is posted.";
            };
            secretFile = mkOption {
              type = types.nullOr types.str;
              default = null;
              description = "A file (outside the Nix store) holding the signing secret.";
            };
          };
        }
      );
      default = { };
      description = "Alert webhooks. Not supported by this oknek version (an assertion says so when set).";
    };

    checkRules = mkOption {
      type = types.bool;
      default = true;
      description = "Run `oknek rules check` on the assembled rule set while building the system.";
    };

    checkConfig = mkOption {
      type = types.bool;
      default = true;
      description = "Run `oknekd --check` on the rendered configuration (with the rule set) while building the system.";
    };

    generated = mkOption {
      internal = true;
      readOnly = true;
      type = types.raw;
      description = "What the module renders, for tests and inspection: the config text, the managed rule files and the rules directory.";
    };
  };

  config = mkIf cfg.enable (mkMerge [
    {
      assertions = settingsAssertions ++ agentAssertions ++ ruleAssertions ++ unsupportedAssertions;

      services.oknek.generated = {
        inherit configText ruleFiles;
        rulesDir = if cfg.manageRules then rulesDir else null;
        config = configFile;
      };

      environment.systemPackages = [ cfg.package ];

      environment.etc = {
        "oknek/oknek.yaml".source = configFile;
        # Read by every preloaded process until oknekd has written its hook table.
        "oknek/preload.conf".text = ''
          runtime_dir = ${cfg.settings.paths.runtime_dir}
          fail_mode = ${cfg.settings.fail_mode}
          timeout_ms = ${toString cfg.settings.decision_timeout_ms}
        '';
      }
      // optionalAttrs cfg.manageRules { "oknek/rules".source = rulesDir; };

      systemd.tmpfiles.rules = optionals (stateDirectory == null) [
        "d ${cfg.settings.paths.state_dir} 0700 root root -"
      ];

      # The appliance's unit (dist/systemd/oknekd.service), setting for setting. NixOS differences:
      # binaries from the store; /etc/oknek is built by environment.etc, so there is no
      # ConfigurationDirectory=; a state_dir outside /var/lib is made by tmpfiles and listed in
      # ReadWritePaths instead of StateDirectory=.
      systemd.services.oknekd = {
        description = "oknek daemon: rules and signed evidence for AI agents";
        documentation = [ "https://github.com/oknek/oknek/blob/main/docs/nixos.md" ];
        wantedBy = [ "multi-user.target" ];
        # Pins live in the host's bpffs, so enforcement survives a restart; oknekd mounts nothing.
        wants = [ "sys-fs-bpf.mount" ];
        after = [
          "sys-fs-bpf.mount"
          "local-fs.target"
        ];
        before = [ "multi-user.target" ];
        # A new generation changes these store paths, never the unit itself: switching reloads.
        reloadTriggers = [ configFile ] ++ optional cfg.manageRules rulesDir;
        # A new package does change the unit; restart in one step rather than stop, switch, start.
        stopIfChanged = false;
        serviceConfig = {
          Type = "notify";
          NotifyAccess = "main";
          ExecStart = "${cfg.package}/bin/oknekd --config ${configPath}";
          # Synchronous: the reload (and so the switch) fails when the new rules are rejected.
          ExecReload =
            "${cfg.package}/bin/oknek "
            + lib.optionalString (cfg.settings.paths.runtime_dir != "/run/oknek") "--runtime-dir ${cfg.settings.paths.runtime_dir} "
            + "reload";
          Restart = "on-failure";
          RestartSec = "2s";
          # oknekd pings from its 1 s timer; a loop stuck for 30 s is killed and restarted.
          WatchdogSec = "30s";
          # Arming the kernel tiers parses kernel BTF, which is slow on small or emulated machines.
          TimeoutStartSec = "120s";
          TimeoutStopSec = "30s";
          OOMScoreAdjust = -500;
          LimitMEMLOCK = "infinity";
          LimitNOFILE = 65536;
          UMask = "0077";

          # oknek.sock is for any uid (the preload shim, `oknek run`); control.sock is checked by
          # the daemon. The preload hook table must survive a restart.
          RuntimeDirectory = runtimeDirectory;
          RuntimeDirectoryMode = "0755";
          RuntimeDirectoryPreserve = "restart";
          StateDirectory = mkIf (stateDirectory != null) stateDirectory;
          StateDirectoryMode = "0700";

          # Root, with only the capabilities it uses (see dist/systemd/oknekd.service for each).
          CapabilityBoundingSet = [
            "CAP_BPF"
            "CAP_PERFMON"
            "CAP_SYS_ADMIN"
            "CAP_NET_ADMIN"
            "CAP_SYS_PTRACE"
            "CAP_DAC_READ_SEARCH"
            "CAP_KILL"
            "CAP_SETUID"
            "CAP_SETGID"
            "CAP_CHOWN"
            "CAP_SYS_RESOURCE"
            "CAP_IPC_LOCK"
          ];
          NoNewPrivileges = true;

          ProtectSystem = "strict";
          ReadWritePaths = [ "-/sys/fs/bpf" ] ++ optional (stateDirectory == null) cfg.settings.paths.state_dir;
          # Not "yes": that would hide the real /home from the daemon, and fanotify marks and
          # executable hashes would land on empty stand-ins. No PrivateTmp/PrivateDevices either.
          ProtectHome = "read-only";
          ProtectKernelTunables = true;
          ProtectKernelModules = true;
          ProtectKernelLogs = true;
          ProtectControlGroups = true;
          ProtectClock = true;
          ProtectHostname = true;
          RestrictNamespaces = true;
          RestrictRealtime = true;
          RestrictSUIDSGID = true;
          LockPersonality = true;
          # BPF programs are JIT-compiled by the kernel, not in this process.
          MemoryDenyWriteExecute = true;
          RestrictAddressFamilies = [
            "AF_UNIX"
            "AF_INET"
            "AF_INET6"
          ];
          SystemCallArchitectures = "native";
          SystemCallFilter = [
            "@system-service bpf perf_event_open fanotify_init fanotify_mark pidfd_getfd open_by_handle_at kcmp seccomp landlock_create_ruleset"
            "~@clock @cpu-emulation @module @mount @obsolete @raw-io @reboot @swap"
          ];
          SystemCallErrorNumber = "EPERM";
        };
      };
    }
    {
      # Agent services, as dist/systemd/oknek-agent.conf places them: started after oknekd.
      # Wants=, not Requires=: restarting or upgrading oknekd must not stop the agent (pinned
      # kernel tiers keep enforcing, and the preload shim fails closed meanwhile).
      systemd.services = mkMerge (
        map (service: {
          ${service.name} = {
            wants = [ "oknekd.service" ];
            after = [ "oknekd.service" ];
            environment = mkIf service.preload { LD_PRELOAD = mkDefault preloadLibrary; };
          };
        }) agentServices
      );
    }
  ]);
}
