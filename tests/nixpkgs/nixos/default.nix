# Stand-in for <nixpkgs/nixos>: same interface as the real one
# ({ configuration, system } -> { config, system, ... }), so a hive goes through the very code
# path it takes on NixOS. The "system" it builds is a plain derivation that looks like a NixOS
# toplevel to a deploy tool: bin/switch-to-configuration (switch|boot|test|dry-activate) and a
# payload whose size (standin.payloadBytes) sets the closure size.
#
# Test hooks (never used outside tests):
# - STANDIN_BUILD_LOG (environment, read at evaluation): the builder appends "<name>" to that
#   file each time it really runs, so tests can count builds.
# - standin.buildSeconds: the builder sleeps that long (to kill a build half-way).
# - standin.payloadBytes, or STANDIN_PAYLOAD_BYTES (environment): the payload's size.
# - on a host, /run/standin-fail-activation makes switch-to-configuration exit 1, and
#   /run/standin-activation-delay (a number of seconds) makes it take that long.
{ configuration, system ? builtins.currentSystem }:
let
  lib = import ../lib.nix;
  pkgs = import ../default.nix { inherit system; };
  args = { inherit config lib pkgs system; modulesPath = toString ./.; options = { }; };
  load = m:
    if builtins.isPath m || builtins.isString m then load (import m)
    else if builtins.isFunction m then m args
    else m;
  flatten = m:
    let v = load m; in
    [ (builtins.removeAttrs v [ "imports" "options" ]) ]
    ++ builtins.concatMap flatten (v.imports or [ ]);
  unwrap = v: if builtins.isAttrs v && v ? _merge then mergeAll v._merge else v;
  mergeAll = vs0:
    let vs = map unwrap vs0; in
    if builtins.all builtins.isAttrs vs then builtins.zipAttrsWith (_: mergeAll) vs
    else if builtins.all builtins.isList vs then builtins.concatLists vs
    else lib.last vs;
  config = mergeAll (flatten configuration);

  std = config.standin or { };
  name = config.networking.hostName or "nixos";
  envBytes = builtins.getEnv "STANDIN_PAYLOAD_BYTES";
  payloadBytes = toString (std.payloadBytes or (if envBytes != "" then envBytes else "4096"));
  buildLog = builtins.getEnv "STANDIN_BUILD_LOG";
  sh = "/bin/sh";
  env = { PATH = "/bin:/usr/bin"; inherit system; };

  payload = derivation (env // {
    name = "${name}-payload";
    builder = sh;
    args = [ "-c" "head -c ${payloadBytes} /dev/urandom > $out" ];
  });

  nixConf = builtins.concatStringsSep "" (builtins.attrValues (builtins.mapAttrs
    (k: v: "${k} = ${if builtins.isList v then builtins.concatStringsSep " " (map toString v) else toString v}\n")
    (config.nix.settings or { })));

  toplevel = derivation (env // {
    name = "nixos-system-${name}";
    builder = sh;
    inherit payload nixConf buildLog;
    sleep = toString (std.buildSeconds or 0);
    passAsFile = [ "nixConf" ];
    args = [ "-c" ''
      set -e
      sleep "$sleep"
      mkdir -p $out/bin $out/etc/nix
      ln -s $payload $out/payload
      cp "$nixConfPath" $out/etc/nix/nix.conf
      echo -n "${name}" > $out/name
      cat > $out/bin/switch-to-configuration <<SCRIPT
      #!/bin/sh
      # stand-in activation: records what it did under /run
      set -e
      case "\$1" in
        switch|boot|test|dry-activate) ;;
        *) echo "usage: switch-to-configuration [switch|boot|test|dry-activate]" >&2; exit 1 ;;
      esac
      if [ -e /run/standin-fail-activation ]; then
        echo "activation failed: /run/standin-fail-activation exists" >&2; exit 1
      fi
      if [ -e /run/standin-activation-delay ]; then sleep "\$(cat /run/standin-activation-delay)"; fi
      if [ "\$1" = switch ] || [ "\$1" = test ]; then
        ln -sfn $out /run/current-system
      fi
      echo "\$(date +%s.%N) \$1 $out \$(id -un)" >> /run/standin-activations.log
      SCRIPT
      chmod +x $out/bin/switch-to-configuration
      if [ -n "$buildLog" ]; then echo "${name}" >> "$buildLog"; fi
    '' ];
  });
in
{
  inherit config pkgs;
  options = { };
  system = toplevel;
}
