# An ssh-ng:// relay store (tests/test_deploy.py): portico, and www-1 behind it whose store is
# ssh-ng://portico (Nix's daemon protocol: ssh runs `nix-daemon --stdio` on portico). The lab
# gives www-1 that URL as its only substituter. instances.json is written by the lab.
let host = import ./lab-host.nix ./instances.json; in
{
  signingKey = ./secrets/hive.sec;
  systems.edge.configuration = { networking.hostName = "edge"; };
  systems.web.configuration = { networking.hostName = "web"; };
  instances.portico = host "portico" { system = "edge"; };
  instances.www-1 = host "www-1" { system = "web"; store = "ssh-ng://portico"; ssh.ProxyJump = "portico"; };
}
