# A NixOS VM with services.oknek: an agent user is refused a protected file by the kernel, a
# policy change (a specialisation with one more rule) is applied by reloading oknekd, not
# restarting it, and the evidence of both blocks verifies. Run by the flake:
#
#   nix build .#checks.x86_64-linux.nixos-vm -L
{ self }:

let
  blockOpen = id: path: {
    inherit id;
    title = "Agent reads ${path}";
    kind = "open";
    match.path = path;
    action = "block";
    severity = "high";
  };
in
{
  name = "oknek";

  nodes.machine =
    { ... }:
    {
      imports = [ self.nixosModules.default ];
      virtualisation.memorySize = 1024;

      users.users.agent = {
        isNormalUser = true;
        uid = 1001;
      };

      # The protected files exist before oknekd starts: the kernel tiers mark inodes.
      systemd.tmpfiles.rules = [
        "d /srv/secret 0755 root root -"
        "f /srv/secret/deploy-key 0644 root root - not-for-agents"
        "f /srv/secret/release-key 0644 root root - not-for-agents-either"
      ];

      services.oknek = {
        enable = true;
        agents.demo.users = [ "agent" ];
        rules."80-vm".rules = [ (blockOpen "VM.deploy-key" "/srv/secret/deploy-key") ];
      };

      # The same system with one more rule: switching to it must only reload oknekd.
      specialisation.tightened.configuration = {
        services.oknek.rules."81-vm".rules = [ (blockOpen "VM.release-key" "/srv/secret/release-key") ];
      };
    };

  testScript = ''
    def agent_reads(path):
        return machine.execute(f"su agent -s /bin/sh -c 'cat {path}' 2>&1")

    machine.wait_for_unit("oknekd.service")
    machine.succeed("oknek status")

    with subtest("the kernel refuses the agent the protected file"):
        status, out = agent_reads("/srv/secret/deploy-key")
        assert status != 0 and "Operation not permitted" in out, f"expected EPERM, got {status}: {out}"
        # Not an agent: root reads it.
        machine.succeed("cat /srv/secret/deploy-key")
        status, out = agent_reads("/srv/secret/release-key")
        assert status == 0, f"release-key is not protected yet: {out}"

    with subtest("a policy change reloads oknekd without restarting it"):
        pid = machine.succeed("systemctl show -P MainPID oknekd.service").strip()
        machine.succeed("/run/current-system/specialisation/tightened/bin/switch-to-configuration test")
        machine.wait_for_unit("oknekd.service")
        after = machine.succeed("systemctl show -P MainPID oknekd.service").strip()
        assert pid == after, f"oknekd was restarted ({pid} -> {after}): an enforcement gap"
        status, out = agent_reads("/srv/secret/release-key")
        assert status != 0 and "Operation not permitted" in out, f"expected EPERM, got {status}: {out}"

    with subtest("the blocks are signed evidence; the key lives in the state dir"):
        machine.succeed("oknek events --verdict block | grep VM.deploy-key")
        machine.succeed("oknek events --verdict block | grep VM.release-key")
        machine.succeed("oknek verify")
        machine.succeed("test -f /var/lib/oknek/host.key")
        machine.succeed("test \"$(stat -c %a /var/lib/oknek)\" = 700")
  '';
}
