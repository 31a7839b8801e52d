# The jump host and relay store: reachable from the deployer, in front of the web servers.
{ ... }:
{
  imports = [ ./common.nix ];
  networking.hostName = "portico";
  networking.firewall.allowedTCPPorts = [ 22 ];
}
