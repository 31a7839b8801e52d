# What a deployment will change, in the lab (`nix-hive diff`, `deploy --diff/--confirm`): two
# systems of hosts (web-*, db-*), whose version set PREVIEW_SET (environment; nix-hive
# evaluates with --impure) is "A" (default) or "B". From A to B:
# - web: openssl 3.0.13 -> 3.0.15; its unit app.service changes (restarts); sshd's settings
#   change (sshd.service restarts: called out);
# - db: postgresql 16.2 -> 16.3; worker.service changes and is reloadIfChanged (reloads);
#   another kernel (needs a reboot: called out), and its switch inhibitor `dbus` changes
#   (deploy will not switch it without --reboot or --ignore-inhibitors: called out).
# See tests/nixpkgs/nixos/default.nix for the stand-in's options.
let
  discovered = builtins.fromJSON (builtins.readFile ./instances.json);
  set = let v = builtins.getEnv "PREVIEW_SET"; in if v == "" then "A" else v;
  b = set == "B";
  host = import ./lab-host.nix ./instances.json;
  named = prefix: builtins.filter (n: builtins.match "${prefix}-.*" n != null) (builtins.attrNames discovered);
  of = system: name: { inherit name; value = host name { inherit system; }; };
in
{
  signingKey = ./secrets/hive.sec;
  confirmTimeout = 12;
  systems.web.configuration = {
    networking.hostName = "web";
    standin.payloadBytes = 4096;
    standin.packages = { openssl = if b then "3.0.15" else "3.0.13"; nginx = "1.26.1"; };
    systemd.services.app = { script = "echo app ${set}; sleep infinity"; };
    services.openssh.settings = { PermitRootLogin = "prohibit-password"; X11Forwarding = b; };
  };
  systems.db.configuration = {
    networking.hostName = "db";
    standin.payloadBytes = 4096;
    standin.packages = { postgresql = if b then "16.3" else "16.2"; };
    standin.kernel = if b then "standin-kernel-2" else "standin-kernel-1";
    system.switch.inhibitors.dbus = if b then "dbus-1.16" else "dbus-1.14";
    systemd.services.worker = {
      script = "echo worker ${set}; sleep infinity";
      reloadIfChanged = true;
      reload = "true";
    };
  };
  instances = builtins.listToAttrs (map (of "web") (named "web") ++ map (of "db") (named "db"));
}
