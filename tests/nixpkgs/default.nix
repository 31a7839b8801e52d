# Stand-in for nixpkgs: no packages, only what the tests and the lab need.
{ system ? builtins.currentSystem, ... }:
{
  lib = import ./lib.nix;
  inherit system;
}
