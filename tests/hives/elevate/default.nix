# Deploying as a non-root user (tests/test_elevate.py): a relay (portico) and a web host
# behind it, both reached as the lab's `deploy` user, with a key and a check. ELEVATE_VARIANT
# (environment) "unhealthy" makes the web system's check fail (the host rolls back);
# HIVE_ELEVATE, when set, is the deployment's `elevate`.
let
  host = import ./lab-host.nix ./instances.json;
  variant = builtins.getEnv "ELEVATE_VARIANT";
  elevate = builtins.getEnv "HIVE_ELEVATE";
in
{
  signingKey = ./secrets/hive.sec;
  activationTimeout = 60;
  confirmTimeout = 10;
  keys.token = { text = builtins.getEnv "ELEVATE_TOKEN"; user = "deploy"; permissions = "0600"; };
  systems.edge.configuration = { networking.hostName = "edge"; };
  systems.web = {
    configuration = {
      networking.hostName = "web-${variant}";
      standin.payloadBytes = 4096;
      standin.activation = if variant == "fail" then "fail" else "ok";
    };
    keys = [ "token" ];
    checks.up = { command = if variant == "unhealthy" then "false" else "test -e /run/current-system";
                  retries = 0; };
  };
  instances.portico = host "portico" { system = "edge"; };
  instances.www-1 = host "www-1" { system = "web"; store = "ssh://portico"; ssh.ProxyJump = "portico"; };
} // (if elevate == "" then { } else { inherit elevate; })
