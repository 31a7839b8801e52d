# A relay (portico) with two web hosts behind it, and a host reached directly (solo): for the
# lab tests of a relay that dies in the middle of a push and of store URLs with parameters.
# HIVE_TEST_STORE_URL (environment; nix-hive evaluates with --impure) is the web hosts' store.
let
  store = let s = builtins.getEnv "HIVE_TEST_STORE_URL"; in if s == "" then "ssh://portico" else s;
  host = import ./lab-host.nix ./instances.json;
in
{
  signingKey = ./secrets/hive.sec;
  systems.edge.configuration = { networking.hostName = "edge"; standin.payloadBytes = 4096; };
  # WEB_PAYLOAD_BYTES: a test that counts the bytes sent wants the web closure well above the rest
  systems.web.configuration = { networking.hostName = "web"; standin.payloadBytes =
    let bytes = builtins.getEnv "WEB_PAYLOAD_BYTES"; in if bytes == "" then 3000000 else builtins.fromJSON bytes; };
  systems.solo.configuration = { networking.hostName = "solo"; standin.payloadBytes = 4096; };
  # a relay that dies is noticed in seconds, not ssh's default minutes
  instances.portico = host "portico" { system = "edge"; ssh = { ServerAliveInterval = 1; ServerAliveCountMax = 2; }; };
  instances.www-1 = host "www-1" { system = "web"; inherit store; ssh.ProxyJump = "portico"; };
  instances.www-2 = host "www-2" { system = "web"; inherit store; ssh.ProxyJump = "portico"; };
  instances.solo = host "solo" { system = "solo"; };
}
