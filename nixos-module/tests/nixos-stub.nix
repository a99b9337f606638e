# Stands in for the NixOS options services.oknek writes to, so the module can be evaluated with
# nothing but nixpkgs' lib (the test cannot fetch nixpkgs). Only the options the module uses are
# declared, with the option types NixOS gives them where merging matters (lists concatenate) and
# freeform attribute sets elsewhere. What this does not check: NixOS's own rendering of units and
# /etc, and option types this stub declares loosely (serviceConfig values, environment.etc).
{ lib, ... }:

let
  inherit (lib) mkOption types;
  freeform = types.submodule { freeformType = types.attrsOf types.anything; };
  listOption = mkOption {
    type = types.listOf types.str;
    default = [ ];
  };
in
{
  options = {
    assertions = mkOption {
      type = types.listOf types.unspecified;
      default = [ ];
    };
    warnings = mkOption {
      type = types.listOf types.str;
      default = [ ];
    };
    environment.etc = mkOption {
      type = types.attrsOf freeform;
      default = { };
    };
    environment.systemPackages = mkOption {
      type = types.listOf types.unspecified;
      default = [ ];
    };
    systemd.tmpfiles.rules = listOption;
    systemd.services = mkOption {
      default = { };
      type = types.attrsOf (
        types.submodule {
          freeformType = types.attrsOf types.anything;
          options = {
            after = listOption;
            requires = listOption;
            wantedBy = listOption;
            reloadTriggers = mkOption {
              type = types.listOf types.unspecified;
              default = [ ];
            };
            environment = mkOption {
              type = types.attrsOf types.str;
              default = { };
            };
            serviceConfig = mkOption {
              type = types.attrsOf types.unspecified;
              default = { };
            };
          };
        }
      );
    };
    users.users = mkOption {
      default = { };
      type = types.attrsOf (
        types.submodule {
          freeformType = types.attrsOf types.anything;
          options.uid = mkOption {
            type = types.nullOr types.int;
            default = null;
          };
        }
      );
    };
    users.groups = mkOption {
      default = { };
      type = types.attrsOf (
        types.submodule {
          freeformType = types.attrsOf types.anything;
          options.gid = mkOption {
            type = types.nullOr types.int;
            default = null;
          };
        }
      );
    };
  };
}
