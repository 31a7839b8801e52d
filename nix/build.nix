# The systems of a deployment (deployment.nix: a file or a flake output), each built as on
# NixOS: through `<nixpkgs/nixos>` with the NIX_PATH entries of its `paths` (nix-hive passes
# them with -I), or, for a system that gives `nixpkgs` (a flake input such as
# `inputs.nixpkgs`, or a checkout) or `specialArgs`, through that nixpkgs'
# `nixos/lib/eval-config.nix`, as `nixpkgs.lib.nixosSystem` does. nix-hive evaluates one
# attribute per system: `<system>.drvPath`.
let
  hive = import ./deployment.nix;
  # a flake input's store path, or a checkout's file name (never copied to the store whole)
  root = n: if builtins.isAttrs n then n.outPath else toString n;
  build = _: s:
    let platform = if s.system or null != null then { inherit (s) system; } else { }; in
    if s.nixpkgs or null != null || s ? specialArgs then
      (import ((if s.nixpkgs or null != null then root s.nixpkgs else toString <nixpkgs>) + "/nixos/lib/eval-config.nix")
        ({ modules = [ s.configuration ]; specialArgs = s.specialArgs or { }; } // platform)).config.system.build.toplevel
    else
      (import <nixpkgs/nixos> ({ inherit (s) configuration; } // platform)).system;
in
builtins.mapAttrs build hive.systems
