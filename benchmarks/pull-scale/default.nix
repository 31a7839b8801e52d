# benchmarks/pull_scale.py's deployment: hosts h0001.. on the deployer's segment, one system
# shared by all, whose version (BENCH_PULL_VARIANT) and payload size (BENCH_PULL_BYTES) the
# benchmark sets for each step: a version of its own payload, so no step finds the last one's on
# the hosts. instances.json comes from the lab (the cache host is no instance). A command check
# per host, run by the agent (publish) or over ssh (deploy, magic rollback: the defaults).
let
  discovered = builtins.fromJSON (builtins.readFile ./instances.json);
  variant = builtins.getEnv "BENCH_PULL_VARIANT";
  bytes = builtins.fromJSON (builtins.getEnv "BENCH_PULL_BYTES");
in
{
  signingKey = ./secrets/hive.sec;
  systems.node.configuration = { networking.hostName = "node-${variant}"; standin.payloadBytes = bytes; };
  systems.node.checks.up.command = "test -e /run/current-system";
  instances = builtins.mapAttrs
    (name: host: { system = "node"; hostKey = host.hostKey; ssh = { Hostname = host.address; } // host.ssh; })
    (builtins.removeAttrs discovered [ "cache" ]);
}
