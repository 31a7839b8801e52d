# Safe rollouts in the lab: a relay (portico) and web hosts behind it, whose system is chosen
# by ROLLOUT_VARIANT (environment; nix-hive evaluates with --impure): "" or "v1" a healthy
# system, "v2" another healthy one, "unhealthy" (its checks fail), "fail" (its activation
# fails), "hang" (its activation never ends), "nossh" (it stops sshd, as a broken
# configuration would), "brokenunit" (a unit of it fails to start, on a systemd host).
# See tests/nixpkgs/nixos/default.nix for the stand-in's options.
let
  discovered = builtins.fromJSON (builtins.readFile ./instances.json);
  variant = let v = builtins.getEnv "ROLLOUT_VARIANT"; in if v == "" then "v1" else v;
  host = import ./lab-host.nix ./instances.json;
  web = {
    networking.hostName = "web-${variant}";
    standin.payloadBytes = 4096;
    standin.httpPort = 8080;
    standin.healthy = variant != "unhealthy";
    standin.activation = if variant == "fail" then "fail" else if variant == "hang" then "hang" else "ok";
    services.openssh.enable = variant != "nossh";
    systemd.services = if variant == "brokenunit" then { broken = { script = "exit 3"; serviceConfig.Type = "oneshot"; }; }
      else { };
  };
  www = builtins.filter (n: builtins.match "www-.*" n != null) (builtins.attrNames discovered);
in
{
  signingKey = ./secrets/hive.sec;
  activationTimeout = 60;
  confirmTimeout = 8;
  systems.edge.configuration = { networking.hostName = "edge"; };
  systems.web = {
    configuration = web;
    checks.health = { command = "test \"$(cat /run/standin-health)\" = healthy"; retries = 1; interval = 1; };
    checks.http = { http = "http://127.0.0.1:8080/health"; timeout = 5; retries = 1; interval = 1; };
  };
  instances = {
    portico = host "portico" { system = "edge"; };
  } // builtins.listToAttrs (map (name: {
    inherit name;
    value = host name { system = "web"; store = "ssh://portico"; ssh.ProxyJump = "portico"; };
  }) www);
}
