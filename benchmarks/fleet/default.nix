# The benchmark's deployment: one system for every host; "relay" is the relay store (and runs
# the system too), every other host substitutes from it. instances.json comes from the lab.
let
  discovered = builtins.fromJSON (builtins.readFile ./instances.json);
  pub = ./secrets/hive.pub;
in
{
  signingKey = ./secrets/hive.sec;
  systems.node.configuration = {
    networking.hostName = "node";
    nix.settings.substituters = [ "ssh://relay" ];
    nix.settings.trusted-public-keys = [ (builtins.readFile pub) ];
  };
  # BENCH_CHECKS=1 (environment): a health check on every host, to measure what checks cost.
  systems.node.checks = if builtins.getEnv "BENCH_CHECKS" == "1" then {
    up.command = "test -e /run/current-system";
  } else { };
  instances = builtins.mapAttrs
    (name: host: {
      system = "node";
      hostKey = host.hostKey;
      ssh = { Hostname = host.address; } // host.ssh // (if name == "relay" then { } else { ProxyJump = "relay"; });
    } // (if name == "relay" then { } else { store = "ssh://relay"; }))
    discovered;
}
