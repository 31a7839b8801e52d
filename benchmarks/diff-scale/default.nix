# benchmarks/diff_scale.py's deployment: relays r1..rR on the deployer's segment (system edge,
# which never changes), hosts h0001.. behind them (their jump host and relay store), each
# running one of three systems, web, db and cache, as benchmarks/diff_scale.py wrote in
# instances.json (with its relay). BENCH_DIFF_SET (environment; nix-hive evaluates with
# --impure): "A" (default) or "B", each system's package versions and its units. From A to B,
# in every system: packages upgraded, one added, one removed, one kept; a unit whose script
# changes (restarted), one with reloadIfChanged (reloaded), one unchanged, one gone (stopped).
# See tests/nixpkgs/nixos/default.nix (standin.packages, systemd.services).
let
  discovered = builtins.fromJSON (builtins.readFile ./instances.json);
  set = let v = builtins.getEnv "BENCH_DIFF_SET"; in if v == "" then "A" else v;
  host = import ./lab-host.nix ./instances.json;
  packages = {
    A = {
      web = { openssl = "3.0.13"; nginx = { version = "1.24.0"; bytes = 200000; }; curl = "8.5.0";
              zlib = "1.3.1"; };
      db = { openssl = "3.0.13"; postgresql = { version = "16.2"; bytes = 300000; }; python3 = "3.11.7";
             sqlite = "3.45.1"; };
      cache = { openssl = "3.0.13"; redis = { version = "7.2.4"; bytes = 150000; }; jemalloc = "5.3.0";
                zlib = "1.3.1"; };
    };
    B = {
      web = { openssl = "3.0.15"; nginx = { version = "1.26.1"; bytes = 250000; }; zstd = "1.5.6";
              zlib = "1.3.1"; };
      db = { openssl = "3.0.15"; postgresql = { version = "16.3"; bytes = 340000; }; lz4 = "1.9.4";
             sqlite = "3.45.1"; };
      cache = { openssl = "3.0.15"; redis = { version = "7.2.5"; bytes = 160000; }; zstd = "1.5.6";
                zlib = "1.3.1"; };
    };
  }.${set};
  units = name: {
    "${name}-main" = { script = "exec sleep 100000 # ${name} ${set}"; };
    "${name}-agent" = { script = "exec sleep 100001 # ${set}"; reloadIfChanged = true; reload = "true"; };
    "${name}-logs" = { script = "exec sleep 100002"; };
  } // (if set == "A" then { "${name}-legacy" = { script = "exec sleep 100003"; }; } else { });
  system = name: {
    networking.hostName = name;
    standin.payloadBytes = 50000;
    standin.packages = packages.${name};
    systemd.services = units name;
  };
  instance = name: entry:
    if entry ? system
    then host name { inherit (entry) system; store = "ssh://${entry.relay}"; ssh.ProxyJump = entry.relay; }
    else host name { system = "edge"; };
in
{
  signingKey = ./secrets/hive.sec;
  systems.edge.configuration = { networking.hostName = "edge"; standin.payloadBytes = 4096; };
  systems.web.configuration = system "web";
  systems.db.configuration = system "db";
  systems.cache.configuration = system "cache";
  instances = builtins.mapAttrs instance discovered;
}
