# benchmarks/keys_scale.py's deployment: hosts h01..h20 with BENCH_KEYS keys each and "big" with
# BENCH_BIG_KEYS, all on the deployer's segment (instances.json comes from the lab). Keys k0..
# are read from secrets/keys/kN (1 KiB of random bytes each, written by the benchmark), to
# /run/keys/kN; every host runs the same small system.
let
  discovered = builtins.fromJSON (builtins.readFile ./instances.json);
  env = builtins.getEnv;
  count = builtins.fromJSON (env "BENCH_KEYS");
  big = builtins.fromJSON (env "BENCH_BIG_KEYS");
  names = n: builtins.genList (i: "k${toString i}") n;
in
{
  signingKey = ./secrets/hive.sec;
  keys = builtins.listToAttrs (map (name: { inherit name; value.keyFile = ./secrets/keys + "/${name}"; })
    (names (if big > count then big else count)));
  systems.node.configuration = { networking.hostName = "node"; standin.payloadBytes = 4096; };
  instances = builtins.mapAttrs
    (name: host: {
      system = "node";
      hostKey = host.hostKey;
      ssh = { Hostname = host.address; } // host.ssh;
      keys = names (if name == "big" then big else count);
    })
    discovered;
}
