{
  # The stand-in nixpkgs as a flake input (inputs.nixpkgs.url = "path:…/tests/nixpkgs"):
  # its source holds nixos/lib/eval-config.nix, which nix-hive's flake form imports.
  description = "stand-in nixpkgs for nix-hive's tests";
  outputs = { self }: { lib = import ./lib.nix; };
}
