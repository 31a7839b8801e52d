# Stand-in for nixpkgs' nixos/lib/eval-config.nix (what nixosSystem and nix-hive's flake form
# call): the modules and specialArgs go through the stand-in's nixos/default.nix.
{ modules ? [ ], specialArgs ? { }, system ? builtins.currentSystem, ... }:
import ../default.nix { configuration = { imports = modules; }; inherit system specialArgs; }
