# Chained relays (a lab test): portico relays for eu, eu relays for the w* hosts behind it.
# instances.json (addresses, host keys, ssh user and key) is written by the lab.
let
  discovered = builtins.fromJSON (builtins.readFile ./instances.json);
  pub = builtins.readFile ./secrets/hive.pub;
  role = name:
    if name == "portico" then { system = "edge"; }
    else if name == "eu" then { system = "region"; store = "ssh://portico"; jump = "portico"; }
    else { system = "web"; store = "ssh://eu"; jump = "eu"; };
  trusting = upstream: { name, ... }: {
    networking.hostName = name;
    nix.settings.substituters = [ upstream ];
    nix.settings.trusted-public-keys = [ pub ];
  };
in
{
  signingKey = ./secrets/hive.sec;
  systems.edge.configuration = { networking.hostName = "edge"; };
  systems.region.configuration = trusting "ssh://portico" { name = "region"; };
  systems.web.configuration = trusting "ssh://eu" { name = "web"; };
  instances = builtins.mapAttrs
    (name: host:
      let r = role name; in
      {
        inherit (r) system;
        hostKey = host.hostKey;
        ssh = { Hostname = host.address; } // host.ssh // (if r ? jump then { ProxyJump = r.jump; } else { });
      } // (if r ? store then { inherit (r) store; } else { }))
    discovered;
}
