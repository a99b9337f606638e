{
  description = "oknek: the security line that AI agents on a Linux host cannot step around";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixpkgs-unstable";

  outputs =
    { self, nixpkgs }:
    let
      system = "x86_64-linux";
      pkgs = nixpkgs.legacyPackages.${system};
      inherit (nixpkgs) lib;

      # The workspace without what does not go into a build, so editing docs rebuilds nothing.
      src = lib.cleanSourceWith {
        src = lib.cleanSource ./.;
        filter =
          path: type:
          let
            name = baseNameOf path;
            top = lib.removePrefix (toString ./. + "/") (toString path);
          in
          !(
            lib.hasPrefix "target" name
            || lib.elem top [
              "docs"
              "nixos-module"
              "flake.nix"
              "flake.lock"
              "vm-tests"
            ]
          );
      };

      version = (lib.importTOML ./Cargo.toml).workspace.package.version;

      # What probes/bpf/build.rs compiles against: one include root holding the kernel UAPI
      # headers (linux/bpf.h, asm/types.h) and libbpf's (bpf/bpf_helpers.h).
      bpfIncludes =
        p:
        p.runCommand "oknek-bpf-include" { } ''
          mkdir -p $out
          cp -r ${p.linuxHeaders}/include/. $out/
          chmod -R u+w $out
          cp -r ${lib.getDev p.libbpf}/include/. $out/
        '';

      # The probes are compiled for the BPF target: the unwrapped clang, without the cc wrapper's
      # host flags and hardening options that make no sense there.
      bpfBuildEnv = p: {
        CLANG = "${p.buildPackages.llvmPackages.clang-unwrapped}/bin/clang";
        LLVM_STRIP = "${p.buildPackages.llvm}/bin/llvm-strip";
        OKNEK_BPF_INCLUDE = "${bpfIncludes p.buildPackages}";
      };

      # The preload shim is loaded into the host's (glibc) programs, so it is a glibc cdylib.
      mkPreload =
        p:
        p.rustPlatform.buildRustPackage {
          pname = "oknek-preload";
          inherit version src;
          cargoLock.lockFile = ./Cargo.lock;
          cargoBuildFlags = [
            "-p"
            "oknek-preload"
          ];
          doCheck = false;
          installPhase = ''
            runHook preInstall
            install -Dm755 "$(find target -path '*/release/liboknek_preload.so' | head -1)" \
              $out/lib/liboknek_preload.so
            runHook postInstall
          '';
        };

      # oknekd and oknek are static (musl): no NSS, no loader, the same binary on every host.
      mkOknek =
        p:
        p.pkgsStatic.rustPlatform.buildRustPackage (
          {
            pname = "oknek";
            inherit version src;
            cargoLock.lockFile = ./Cargo.lock;
            cargoBuildFlags = [
              "-p"
              "oknekd"
              "-p"
              "oknek"
            ];
            # The eBPF objects are built here, from source, by probes/bpf/build.rs (bpfBuildEnv).
            # Unit tests run in checks.unit-tests (glibc build); many need root and a real kernel.
            doCheck = false;
            postInstall = ''
              mkdir -p $out/share/oknek/rules $out/share/oknek/systemd $out/lib
              cp rules/*.yaml rules/README.md $out/share/oknek/rules/
              cp -r rules/fixtures $out/share/oknek/rules/
              install -m444 keys/oknek-release.pub $out/share/oknek/release.pub
              install -m444 dist/systemd/* $out/share/oknek/systemd/
              install -m755 ${mkPreload p}/lib/liboknek_preload.so $out/lib/
            '';
            meta = {
              description = "Judges every exec, open, connect, send and model call of AI agents before it happens";
              homepage = "https://github.com/oknek/oknek";
              license = lib.licenses.asl20;
              platforms = [ "x86_64-linux" ];
              mainProgram = "oknek";
            };
          }
          // bpfBuildEnv p
        );

      oknek = mkOknek pkgs;
    in
    {
      packages.${system} = {
        inherit oknek;
        default = oknek;
      };

      overlays.default = final: _prev: { oknek = mkOknek final; };

      nixosModules.default =
        { pkgs, ... }:
        {
          imports = [ ./nixos-module ];
          services.oknek.package = lib.mkDefault (
            if pkgs.stdenv.hostPlatform.system == system then oknek else mkOknek pkgs
          );
        };

      devShells.${system}.default = pkgs.mkShell (
        {
          packages = with pkgs; [
            cargo
            rustc
            clippy
            rustfmt
            rust-analyzer
            llvmPackages.clang-unwrapped
            llvm
            bpftools
            libbpf
            qemu
            minisign
            nix
            sqlite
            (python3.withPackages (ps: [
              ps.cryptography
              ps.pyyaml
            ]))
          ];
          OKNEK_NIXPKGS_LIB = "${nixpkgs}";
        }
        // bpfBuildEnv pkgs
      );

      checks.${system} = {
        inherit oknek;

        # cargo test --workspace; tests that need root and the real kernel report themselves
        # as skipped in the build sandbox.
        unit-tests = pkgs.rustPlatform.buildRustPackage (
          {
            pname = "oknek-unit-tests";
            inherit version src;
            cargoLock.lockFile = ./Cargo.lock;
            nativeCheckInputs = [
              pkgs.util-linux
              pkgs.minisign
              (pkgs.python3.withPackages (ps: [ ps.cryptography ]))
            ];
            buildType = "debug";
            checkType = "debug";
            cargoTestFlags = [ "--workspace" ];
            installPhase = "touch $out";
          }
          // bpfBuildEnv pkgs
        );

        # nixos-module/tests/run.sh against this flake's nixpkgs lib and the built binaries:
        # parsing, the rule-set builder, the module's rendering, unit and assertions.
        module-eval =
          pkgs.runCommand "oknek-module-eval"
            {
              nativeBuildInputs = [
                pkgs.nix
                pkgs.minisign
                (pkgs.python3.withPackages (ps: [ ps.pyyaml ]))
              ];
              # The tests read the repository (rules/, dist/), not just the build source.
              tree = lib.cleanSource ./.;
            }
            ''
              # nix-instantiate needs a state directory of its own inside the build sandbox.
              export HOME=$TMPDIR NIX_STATE_DIR=$TMPDIR/nix-state NIX_CONF_DIR=$TMPDIR/nix-conf
              mkdir -p $NIX_CONF_DIR
              cp -r $tree repo
              chmod -R u+w repo
              OKNEK_NIXPKGS_LIB=${nixpkgs} OKNEK_BIN_DIR=${oknek}/bin bash repo/nixos-module/tests/run.sh
              touch $out
            '';

        # Boots NixOS with services.oknek in a VM and shows a block, a reload without a restart
        # and verified evidence: nixos-module/tests/vm.nix.
        nixos-vm = pkgs.testers.runNixOSTest (import ./nixos-module/tests/vm.nix { inherit self; });
      };

      formatter.${system} = pkgs.nixfmt;
    };
}
