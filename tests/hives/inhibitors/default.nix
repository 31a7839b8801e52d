# Switch inhibitors in the lab: two hosts of one system whose inhibitor `dbus` takes the value
# of HIVE_DBUS (environment; nix-hive evaluates with --impure), and whose package `hello`
# takes HIVE_HELLO's version, so that the system changes with or without the inhibitor.
# See tests/nixpkgs/nixos/default.nix (system.switch.inhibitors, standin.packages).
let
  env = name: default: let v = builtins.getEnv name; in if v == "" then default else v;
  host = import ./lab-host.nix ./instances.json;
in
{
  signingKey = ./secrets/hive.sec;
  confirmTimeout = 8;
  systems.web.configuration = {
    networking.hostName = "web";
    standin.payloadBytes = 4096;
    standin.packages.hello = env "HIVE_HELLO" "2.12";
    system.switch.inhibitors.dbus = env "HIVE_DBUS" "dbus-1.14";
  };
  instances.a = host "a" { system = "web"; };
  instances.b = host "b" { system = "web"; };
}
