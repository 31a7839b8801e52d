# A web server behind portico. It trusts the deployment's signing key and substitutes from
# portico, so the deployer sends each www host only a reference, never the closure.
{ lib, ... }:
let
  pub = ./secrets/hive.pub;
in
{
  imports = [ ./common.nix ];
  # Every www host runs this one closure (built once, copied once): nothing here is one host's.
  # Each gets its own name from DHCP or its cloud's metadata (an empty hostName lets it), its
  # address from DHCP too, its secrets as keys (docs/deployment.md: per-host values).
  networking.hostName = "";
  system.name = "www"; # the closure's name: nixos-system-www
  services.nginx.enable = true;
  nix.settings = {
    # Root on the www host reaches portico with its own ssh configuration (a Host block
    # and a key of its own, e.g. programs.ssh.extraConfig on NixOS).
    substituters = [ "ssh://portico" ];
    trusted-public-keys = lib.optional (builtins.pathExists pub) (builtins.readFile pub);
  };
}
