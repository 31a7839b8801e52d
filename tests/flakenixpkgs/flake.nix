# Stand-in for the nixpkgs flake, for tests/test_flake.py only: no inputs, no network, nothing
# real.  nix eval --override-input nixpkgs path:<this folder> ...
{
  description = "nixpkgs stand-in for nix-hive's flake test";

  outputs = { self }:
    let lib = import ./lib.nix;
    in {
      inherit lib;
      legacyPackages = lib.genAttrs [ "x86_64-linux" "aarch64-linux" "x86_64-darwin" "aarch64-darwin" ]
        (system: import ./default.nix { inherit system; });
    };
}
