# A tiny stand-in for nixpkgs' package set: the module only needs a few packages and builders,
# and uses them lazily. Instead of derivations, these return attribute sets that look like
# derivations (type, name, outPath) and keep what they were given (text, buildCommand), so a test
# can read them. Their store paths are made from their inputs: a changed rule gives a changed
# path, as in a real build. Nothing is built or written to the store.
{ lib }:

let
  stubDerivation =
    name: attrs:
    let
      hash = lib.replaceStrings [ "e" ] [ "f" ] (
        builtins.substring 0 32 (builtins.hashString "sha256" (name + builtins.toJSON attrs))
      );
    in
    attrs
    // {
      type = "derivation";
      inherit name;
      outPath = "${builtins.storeDir}/${hash}-${name}";
    };
in
{
  writeText = name: text: stubDerivation name { inherit text; };
  runCommand =
    name: env: buildCommand:
    stubDerivation name (
      builtins.removeAttrs env [ "nativeBuildInputs" ] // { inherit buildCommand; }
    );
  coreutils = stubDerivation "coreutils" { };
  minisign = stubDerivation "minisign" { };
  oknek = stubDerivation "oknek-0.1.0" { };
}
