# nix-hive without flakes:  nix-env -if .   or   nix-build   (uses <nixpkgs> unless given pkgs).
# With flakes, see flake.nix; both build the same expression, nix/package.nix.
{ pkgs ? import <nixpkgs> { } }:
pkgs.callPackage ./nix/package.nix { }
