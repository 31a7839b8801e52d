# Rolling reboots in the lab (tests/test_reboot.py): a relay (portico) and web hosts behind it,
# each with a system of its own, chosen by REBOOT_VARIANT (all web hosts) or REBOOT_VARIANTS
# ("www-1=v2,www-2=v1b": per host; environment, nix-hive evaluates with --impure):
#   v1, v1b     healthy, kernel k1 (v1b: another system, the same kernel: no reboot needed)
#   v2          healthy, kernel k2
#   unhealthy   kernel k2, its checks fail
#   hang        kernel k2, its boot hangs before systemd (standin.boot = "hang")
#   nossh       kernel k2, stops sshd once booted
# REBOOT_GRUB_FIRST: web hosts (by name, comma-separated) whose GRUB boots its first entry by
# default (boot.loader.grub.default = 0); the others' is "saved". REBOOT_GRUB_NOENV: web hosts
# whose grub.cfg has no grubenv block (standin.grubEnv = false). Only a host with /boot/grub and
# no stand-in boot loader (tests/test_reboot.py makes one) reads them.
# See tests/nixpkgs/nixos/default.nix for the stand-in's options.
let
  discovered = builtins.fromJSON (builtins.readFile ./instances.json);
  host = import ./lab-host.nix ./instances.json;
  all = let v = builtins.getEnv "REBOOT_VARIANT"; in if v == "" then "v1" else v;
  given = builtins.filter (p: builtins.length p == 3) (map (builtins.split "=")
    (builtins.filter builtins.isString (builtins.split "," (builtins.getEnv "REBOOT_VARIANTS"))));
  perHost = builtins.listToAttrs (map (p: { name = builtins.elemAt p 0; value = builtins.elemAt p 2; }) given);
  variantOf = name: perHost.${name} or all;
  web = name: let variant = variantOf name; in {
    networking.hostName = "${name}-${variant}";
    standin.payloadBytes = 4096;
    standin.httpPort = 8080;
    standin.kernel = if builtins.elem variant [ "v1" "v1b" ] then "k1" else "k2";
    standin.healthy = variant != "unhealthy";
    standin.boot = if variant == "hang" then "hang" else "ok";
    services.openssh.enable = variant != "nossh";
    boot.loader.grub.default = if builtins.elem name (named "REBOOT_GRUB_FIRST") then 0 else "saved";
    standin.grubEnv = !(builtins.elem name (named "REBOOT_GRUB_NOENV"));
  };
  named = var: builtins.filter builtins.isString (builtins.split "," (builtins.getEnv var));
  www = builtins.filter (n: builtins.match "www-.*" n != null) (builtins.attrNames discovered);
in
{
  signingKey = ./secrets/hive.sec;
  activationTimeout = 60;
  confirmTimeout = 8;
  rebootTimeout = 60;
  systems = {
    edge.configuration = { networking.hostName = "edge"; };
  } // builtins.listToAttrs (map (name: {
    inherit name;
    value = {
      configuration = web name;
      checks.health = { command = "test \"$(cat /run/standin-health)\" = healthy"; retries = 1; interval = 1; };
      checks.http = { http = "http://127.0.0.1:8080/health"; timeout = 5; retries = 1; interval = 1; };
    };
  }) www);
  instances = {
    portico = host "portico" { system = "edge"; };
  } // builtins.listToAttrs (map (name: {
    inherit name;
    value = host name { system = name; store = "ssh://portico"; ssh.ProxyJump = "portico"; };
  }) www);
}
