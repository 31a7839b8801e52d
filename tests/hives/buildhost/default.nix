# A build host: the web system is built on BUILD_HOST (environment; default portico, the
# relay), the edge system on the deployer. The web hosts substitute from portico.
let
  host = import ./lab-host.nix ./instances.json;
  buildHost = let b = builtins.getEnv "BUILD_HOST"; in if b == "" then "portico" else b;
in
{
  signingKey = ./secrets/hive.sec;
  systems.edge.configuration = { networking.hostName = "edge"; standin.payloadBytes = 4096; };
  systems.web = { configuration = { networking.hostName = "web"; }; inherit buildHost; };
  instances.portico = host "portico" { system = "edge"; };
  instances.www-1 = host "www-1" { system = "web"; store = "ssh://portico"; ssh.ProxyJump = "portico"; };
  instances.www-2 = host "www-2" { system = "web"; store = "ssh://portico"; ssh.ProxyJump = "portico"; };
}
