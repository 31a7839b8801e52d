# `nix-hive diff` in the lab: a relay (portico, system edge, which never changes) and two
# systems, web and db, whose packages come from the version set DIFF_SET (environment;
# nix-hive evaluates with --impure): "A" (default) or "B". DIFF_TOKEN (a number) makes the db
# system's payload, and so its store paths, this test's own (a path it deletes from the
# deployer's store is nobody else's). See tests/nixpkgs/nixos/default.nix for standin.packages.
let
  discovered = builtins.fromJSON (builtins.readFile ./instances.json);
  set = let v = builtins.getEnv "DIFF_SET"; in if v == "" then "A" else v;
  token = let t = builtins.getEnv "DIFF_TOKEN"; in if t == "" then 0 else builtins.fromJSON t;
  host = import ./lab-host.nix ./instances.json;
  packages = {
    A = {
      web = { openssl = "3.0.13"; nginx = { version = "1.24.0"; bytes = 200000; }; curl = "8.5.0";
              tzdata = "unstable-2024-01-01"; libfoo = { version = "1.0"; bytes = 10000; }; };
      db = { openssl = "3.0.13"; postgresql = { version = "16.2"; bytes = 300000; }; python3 = "3.11.7";
             sqlite = "3.45.1"; };
    };
    # libfoo and postgresql keep their versions and change their size (another path): by 2,000
    # bytes (under diff-closures' 8 KiB, not listed) and by 40,000 (listed); sqlite stays as it is
    B = {
      web = { openssl = "3.0.15"; nginx = { version = "1.26.1"; bytes = 250000; }; zstd = "1.5.6";
              tzdata = "unstable-2024-03-01"; libfoo = { version = "1.0"; bytes = 12000; }; };
      db = { openssl = "3.0.15"; postgresql = { version = "16.2"; bytes = 340000; }; python3 = "3.12.1";
             sqlite = "3.45.1"; };
    };
  }.${set};
  named = prefix: builtins.filter (n: builtins.match "${prefix}-.*" n != null) (builtins.attrNames discovered);
  behind = system: name: { inherit name; value = host name { inherit system; store = "ssh://portico"; ssh.ProxyJump = "portico"; }; };
in
{
  signingKey = ./secrets/hive.sec;
  systems.edge.configuration = { networking.hostName = "edge"; standin.payloadBytes = 4096; };
  systems.web.configuration = { networking.hostName = "web"; standin.payloadBytes = 4096; standin.packages = packages.web; };
  systems.db.configuration = {
    networking.hostName = "db";
    standin.payloadBytes = 50000 + token;
    standin.packages = packages.db;
  };
  instances = { portico = host "portico" { system = "edge"; }; }
    // builtins.listToAttrs (map (behind "web") (named "web") ++ map (behind "db") (named "db"));
}
