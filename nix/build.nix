# The systems of a deployment, each built through <nixpkgs/nixos> exactly as on NixOS.
#
# The deployment file is named by NIX_HIVE_DEPLOYMENT (absolute path, --impure); nix-hive
# passes the NIX_PATH entries of the systems being built (their `paths`) with -I, and builds
# the attributes it needs: `nix build -f build.nix www portico`.
let
  file = builtins.getEnv "NIX_HIVE_DEPLOYMENT";
  hive = import (/. + file);
  build = _: s:
    (import <nixpkgs/nixos> ({ inherit (s) configuration; }
      // (if s.system or null != null then { inherit (s) system; } else { }))).system;
in
builtins.mapAttrs build hive.systems
