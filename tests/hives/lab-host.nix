# An instance of a lab hive: its address, ssh options and pinned host key from the
# instances.json the lab wrote (as terraform would), plus `extra` attributes (ssh ones merged).
# tests/fleet.py copies this file beside each hive it starts:
#   host = import ./lab-host.nix ./instances.json;   host "www-1" { system = "web"; }
instancesJson:
let discovered = builtins.fromJSON (builtins.readFile instancesJson); in
name: extra: {
  ssh = { Hostname = discovered.${name}.address; } // (discovered.${name}.ssh or { }) // (extra.ssh or { });
  hostKey = discovered.${name}.hostKey;
} // builtins.removeAttrs extra [ "ssh" ]
