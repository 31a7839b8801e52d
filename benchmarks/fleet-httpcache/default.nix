# The benchmark's deployment with an HTTP binary cache as the relay store: every host but
# "relay" (the jump host) and "cache" runs the big system and substitutes from
# http://cache:8080, a static server in the cache host's namespace serving /run/nix-cache;
# nix-hive fills it through the cache host's own Nix over ssh. relay and cache run a small
# system, so the big closure leaves the deployer once, as with benchmarks/fleet.
# BENCH_CACHE_UPLOAD (environment) overrides the upload URL (e.g. another compression).
let
  discovered = builtins.fromJSON (builtins.readFile ./instances.json);
  upload = let u = builtins.getEnv "BENCH_CACHE_UPLOAD"; in
    if u == "" then "ssh://cache?remote-store=file:///run/nix-cache" else u;
  cache = "http://cache:8080";
  small = name: name == "relay" || name == "cache";
in
{
  signingKey = ./secrets/hive.sec;
  stores.${cache}.upload = upload;
  systems.node.configuration = { networking.hostName = "node"; };
  systems.edge.configuration = { networking.hostName = "edge"; standin.payloadBytes = 4096; };
  instances = builtins.mapAttrs
    (name: host: {
      system = if small name then "edge" else "node";
      hostKey = host.hostKey;
      ssh = { Hostname = host.address; } // host.ssh // (if name == "relay" then { } else { ProxyJump = "relay"; });
    } // (if small name then { } else { store = cache; }))
    discovered;
}
