# Shared by every system of the example: plain NixOS configuration.
{ ... }:
{
  services.openssh.enable = true;
  nix.settings.trusted-users = [ "root" ];
}
