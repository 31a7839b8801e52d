# benchmarks/fleet_scale.py's deployment: relays r1..rR on the deployer's segment, hosts h001..
# behind them (their jump host), "cache" an HTTP binary cache host on every segment. instances.json
# comes from the lab. With BENCH_CACHE=1 (environment) the hosts substitute from
# http://cache:8080, which nix-hive fills through the cache host's own Nix over ssh; else each
# from its relay, a relay store. Relays and the cache host run a small system, the hosts the big
# one, with a command check each (magic rollback is on: the defaults).
let
  discovered = builtins.fromJSON (builtins.readFile ./instances.json);
  cached = builtins.getEnv "BENCH_CACHE" == "1";
  cache = "http://cache:8080";
  isHost = name: discovered.${name} ? relay;  # benchmarks/fleet_scale.py writes each host's relay
in
{
  signingKey = ./secrets/hive.sec;
  stores = if cached then { ${cache}.upload = "ssh://cache?remote-store=file:///run/nix-cache"; } else { };
  systems.node.configuration = { networking.hostName = "node"; };
  systems.node.checks.up.command = "test -e /run/current-system";
  systems.edge.configuration = { networking.hostName = "edge"; standin.payloadBytes = 4096; };
  instances = builtins.mapAttrs
    (name: host: {
      system = if isHost name then "node" else "edge";
      hostKey = host.hostKey;
      ssh = { Hostname = host.address; } // host.ssh
        // (if isHost name then { ProxyJump = host.relay; } else if name == "cache" then { ProxyJump = "r1"; } else { });
    } // (if isHost name then { store = if cached then cache else "ssh://${host.relay}"; } else { }))
    discovered;
}
