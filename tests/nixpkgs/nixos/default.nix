# Stand-in for <nixpkgs/nixos>: same interface as the real one
# ({ configuration, system } -> { config, system, ... }), so a hive goes through the very code
# path it takes on NixOS. The "system" it builds is a plain derivation that looks like a NixOS
# toplevel to a deploy tool: bin/switch-to-configuration (switch|boot|test|dry-activate) and a
# payload whose size (standin.payloadBytes) sets the closure size.
#
# What switch-to-configuration GOAL does on a host (every file below is the host's own /run):
# 1. appends "<epoch> <goal> <path> <user>" to /run/standin-activation-starts.log (every goal);
# 2. the host-wide hooks: /run/standin-fail-activation makes it exit 1 right there, and
#    /run/standin-activation-delay (a number of seconds) makes it sleep that long;
# 3. switch and test only, the activation proper (like NixOS's activation script and unit
#    restarts): /run/current-system -> this system; /run/standin-health := "healthy" or
#    "unhealthy" (standin.healthy); the health server is stopped, then started again if
#    standin.httpPort is set; sshd is stopped or started (services.openssh.enable);
# 4. switch, test and boot: standin.activation = "fail" exits 1 now, "hang" sleeps for ever;
# 5. on success, appends "<epoch> <goal> <path> <user>" to /run/standin-activations.log.
#
# Configuration (merged from the system's modules), for tests only:
# - standin.payloadBytes, or STANDIN_PAYLOAD_BYTES (environment): the payload's size.
# - standin.buildSeconds: the builder sleeps that long (to kill a build half-way).
# - standin.evalCost: evaluating the system computes that many SHA-256 hashes first (CPU time
#   spent by the evaluator with little memory, as a real NixOS evaluation spends seconds:
#   benchmarks/eval_parallel.py).
# - STANDIN_BUILD_LOG (environment, read at evaluation): the builder appends "<name>" to that
#   file each time it really runs, so tests can count builds.
# - standin.activation = "ok" (default) | "fail" | "hang". For switch, test and boot (never
#   dry-activate), after step 3 (so /run/current-system already names the new system, as on
#   NixOS when a unit fails to start): "fail" prints "activation failed: standin.activation =
#   fail" on stderr and exits 1; "hang" prints "activation started, now hanging:
#   standin.activation = hang" on stderr and sleeps 100000 s (the caller must time it out; the
#   process stays on the host until killed). Neither writes the activations.log line. It is
#   this system's behaviour only: running the previous system's switch-to-configuration (a
#   rollback) works as usual. Any other value is an evaluation error.
# - standin.healthy = true (default) | false: what switch/test write to /run/standin-health
#   ("healthy" / "unhealthy"), e.g. for a check `test "$(cat /run/standin-health)" = healthy`.
# - standin.httpPort = PORT (default: none): switch/test (re)start, inside the host, a health
#   server on 127.0.0.1:PORT (`python3 -c CODE standin-http PORT` under setsid/nohup, stdin
#   /dev/null, output to /run/standin-http.log, so it never holds the caller's ssh session).
#   GET /health answers 200 "ok" while /run/standin-health says healthy, else 503 "unhealthy";
#   other paths 404 "not found". It writes its pid to /run/standin-http.pid once listening
#   (activation waits for that, up to 10 s, and fails if it does not come). Each switch/test
#   first kills the server named there (checked by its command line), with or without a new
#   httpPort: a system without httpPort leaves none running.
# - systemd.services.<name> = { script = "…"; serviceConfig.Type = "simple" | "oneshot" | …; }:
#   units of the system (name: letters, digits, _ and -). Each becomes
#   $out/etc/systemd/system/<name>.service running `/bin/sh <script file>` (Type oneshot gets
#   RemainAfterExit=yes). standin.httpPort adds the health server as standin-http.service.
#   On a host whose PID 1 is systemd (/run/systemd/system exists), switch/test do what NixOS's
#   switch-to-configuration does with units: link the new system's unit files into
#   /run/systemd/system, stop the units the new system no longer has, daemon-reload, start the
#   new ones, restart the changed ones (another unit file), start the unchanged ones that are
#   not active; a unit that fails to start makes the switch exit 4 (as NixOS's), after the
#   others were handled. On a host without systemd the health server runs under setsid.
# - switch and boot, on a host with the lab's stand-in boot loader (/boot/standin, a
#   directory of that host's own): "install the boot loader", i.e. write the system profile's
#   current system to /boot/standin/default, the system the host boots by default
#   (tests/lab: at boot the host links /run/current-system to /boot/standin/oneshot, once,
#   else to the default, then runs $out/activate).
# - switch and boot, on a host with GRUB instead (/boot/grub, no /boot/standin): write
#   /boot/grub/grub.cfg as NixOS's install-grub.pl does: its grubenv block (grub-reboot's
#   next_entry taken once, whatever the default, with the `set default="${saved_entry}"` line
#   install-grub.pl keeps there for KDM; else `set default=` boot.loader.grub.default: 0
#   (default) or, with "saved", "${saved_entry}"), the entry "NixOS - Default" (the profile's
#   system) and the submenu "NixOS - All configurations" (every generation, newest first), each
#   entry's `linux` line holding init=SYSTEM/init (tests/lab/boot.py boots by these, as GRUB
#   would). standin.grubEnv = false (default true): no grubenv block at all (a grub.cfg that
#   install-grub.pl did not write, which never reads next_entry).
# - $out/activate: the activation at boot: step 3 without the current-system link (the boot
#   set it), with none of the logs' lines.
# - standin.kernel = "NAME" (default "standin-kernel-1"), standin.initrd = "NAME" (default: the
#   kernel's name), standin.kernelParams = [ "…" ] (default [ "loglevel=4" ]): the system's
#   $out/kernel and $out/initrd are links to store files named by these (shared by every
#   system with the same value, as NixOS's link to the kernel package), $out/kernel-params
#   holds the parameters joined by spaces: what `nix-hive deploy --reboot=auto` compares.
# - standin.boot = "ok" (default) | "hang": "hang" makes every boot of this system hang before
#   systemd starts ($out/standin-boot-hangs; tests/lab/boot.py): no sshd, until a power cycle.
# - services.openssh.enable = true (default) | false: switch/test run the host's
#   /run/standin-sshd-start (start sshd unless it is running) or /run/standin-sshd-stop (stop
#   the listening sshd only: open ssh connections survive, as with NixOS's KillMode=process).
#   The lab (tests/lab/hostfs.py) writes these hooks; where they are missing, start is
#   skipped and stop only warns on stderr.
{ configuration, system ? builtins.currentSystem, specialArgs ? { } }:
let
  lib = import ../lib.nix;
  pkgs = import ../default.nix { inherit system; };
  args = specialArgs // { inherit config lib pkgs system; modulesPath = toString ./.; options = { }; };
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
  # standin.evalCost: hashes chained in batches of 1000 (small lists, so the cost is CPU, not memory)
  evalWork = n: builtins.foldl' (acc: _: builtins.foldl' (a: _: builtins.hashString "sha256" a) acc
    (builtins.genList (x: x) 1000)) "x" (builtins.genList (x: x) (n / 1000));
  # as NixOS: system.name, else the host name, else "unnamed" (an empty hostName: DHCP sets it)
  hostName = config.networking.hostName or "nixos";
  name = (config.system or { }).name or (if hostName == "" then "unnamed" else hostName);
  envBytes = builtins.getEnv "STANDIN_PAYLOAD_BYTES";
  payloadBytes = toString (std.payloadBytes or (if envBytes != "" then envBytes else "4096"));
  buildLog = builtins.getEnv "STANDIN_BUILD_LOG";
  # The machine's shell and tools (Nix's sandbox is given /usr: tests/constants.py)
  sh = "/usr/bin/sh";
  env = { PATH = "/usr/bin"; inherit system; };

  payload = derivation (env // {
    name = "${name}-payload";
    builder = sh;
    args = [ "-c" "head -c ${payloadBytes} /dev/urandom > $out" ];
  });

  nixConf = builtins.concatStringsSep "" (builtins.attrValues (builtins.mapAttrs
    (k: v: "${k} = ${if builtins.isList v then builtins.concatStringsSep " " (map toString v) else toString v}\n")
    (config.nix.settings or { })));

  # Per-system activation behaviour (see the header).
  activation = std.activation or "ok";
  health = if std.healthy or true then "healthy" else "unhealthy";
  httpPort = if std ? httpPort && std.httpPort != null then toString std.httpPort else "";
  openssh = config.services.openssh.enable or true;
  bootMode = std.boot or "ok";
  # built (signed and substituted as the payload is), one store path per name, shared by systems
  bootFile = kind: text: derivation (env // {
    name = "standin-${kind}";
    builder = sh;
    inherit text;
    args = [ "-c" "echo \"$text\" > $out" ];
  });
  kernelFile = bootFile "kernel" (std.kernel or "standin-kernel-1");
  initrdFile = bootFile "initrd" (std.initrd or (std.kernel or "standin-kernel-1"));
  kernelParams = builtins.concatStringsSep " " (std.kernelParams or [ "loglevel=4" ]);
  # grub.cfg's default when no next_entry is set (install-grub.pl's $defaultEntryText)
  grubDefault = let d = config.boot.loader.grub.default or 0; in
    if d == "saved" then "\"\${saved_entry}\"" else toString d;
  grubEnv = if std.grubEnv or true then "1" else "0";
  checked =
    if !(builtins.elem activation [ "ok" "fail" "hang" ]) then
      throw "standin.activation must be \"ok\", \"fail\" or \"hang\", not ${builtins.toJSON activation}"
    else if !(builtins.isBool (std.healthy or true)) then throw "standin.healthy must be a boolean"
    else if !(builtins.isBool openssh) then throw "services.openssh.enable must be a boolean"
    else if !(builtins.elem bootMode [ "ok" "hang" ]) then throw "standin.boot must be \"ok\" or \"hang\""
    else true;

  # Units: systemd.services.<name>, plus the health server's (standin.httpPort).
  declared = config.systemd.services or { };
  unitsChecked = builtins.all (n:
    if builtins.match "[A-Za-z0-9_-]+" n == null then throw "systemd.services: bad unit name ${builtins.toJSON n}"
    else if !(declared.${n} ? script) then throw "systemd.services.${n}: a stand-in unit needs a script"
    else true) (builtins.attrNames declared);
  unitFile = n: type: exec: builtins.toFile "${n}.service" ''
    [Unit]
    Description=stand-in unit ${n} of ${name}
    [Service]
    Type=${type}
    ${if type == "oneshot" then "RemainAfterExit=yes" else ""}
    ExecStart=${exec}
  '';
  httpFile = builtins.toFile "standin-http.py" httpCode;
  units = builtins.mapAttrs (n: u: unitFile n (u.serviceConfig.Type or "simple")
      "/bin/sh ${builtins.toFile "${n}.sh" u.script}") declared
    // (if httpPort == "" then { } else {
      standin-http = unitFile "standin-http" "simple" "/usr/bin/python3 ${httpFile} standin-http ${httpPort}";
    });
  unitLinks = builtins.concatStringsSep "\n" (builtins.attrValues (builtins.mapAttrs
    (n: f: "ln -s ${f} $out/etc/systemd/system/${n}.service") units));

  # The health server started by activation when standin.httpPort is set:
  # `python3 -c CODE standin-http PORT` ("standin-http" marks its command line).
  # GET /health: 200 "ok" if /run/standin-health says healthy, else 503 "unhealthy";
  # any other path: 404. It writes its pid to /run/standin-http.pid once it listens.
  httpCode = ''
    import http.server, os, sys
    port = int(sys.argv[2])
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path.split("?")[0] == "/health":
                try:
                    with open("/run/standin-health") as f:
                        healthy = f.read().strip() == "healthy"
                except OSError:
                    healthy = False
                code, body = (200, b"ok") if healthy else (503, b"unhealthy")
            else:
                code, body = 404, b"not found"
            self.send_response(code)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *args):
            pass
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    with open("/run/standin-http.pid.tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace("/run/standin-http.pid.tmp", "/run/standin-http.pid")
    server.serve_forever()
  '';

  # bin/switch-to-configuration; the builder replaces @out@ with the system's own path.
  switchScript = ''
    #!/bin/sh
    # stand-in activation of @out@ (see tests/nixpkgs/nixos/default.nix):
    # records what it did under /run.
    set -e
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
    export PATH
    out=@out@
    goal="$1"
    case "$goal" in
      switch|boot|test|dry-activate) ;;
      at-boot) ;;  # $out/activate: the activation at boot
      *) echo "usage: switch-to-configuration [switch|boot|test|dry-activate]" >&2; exit 1 ;;
    esac
    if [ "$goal" != at-boot ]; then
      echo "$(date +%s.%N) $goal $out $(id -un)" >> /run/standin-activation-starts.log
    fi
    if [ -e /run/standin-fail-activation ]; then
      echo "activation failed: /run/standin-fail-activation exists" >&2; exit 1
    fi
    if [ -e /run/standin-activation-delay ]; then sleep "$(cat /run/standin-activation-delay)"; fi

    # alive PID: the process exists and is not a zombie
    alive() {
      [ -r "/proc/$1/stat" ] && [ "$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null)" != Z ]
    }

    stop_http() {
      pid=$(cat /run/standin-http.pid 2>/dev/null) || return 0
      if [ -n "$pid" ] && tr '\0' '\n' 2>/dev/null < "/proc/$pid/cmdline" | grep -qx standin-http; then
        kill -TERM "$pid" 2>/dev/null || true
        i=0
        while alive "$pid"; do
          if [ $i -ge 500 ]; then kill -KILL "$pid" 2>/dev/null || true; fi
          if [ $i -ge 1000 ]; then echo "standin: health server $pid does not die" >&2; exit 1; fi
          sleep 0.01; i=$((i + 1))
        done
      fi
      rm -f /run/standin-http.pid
    }

    # units, as NixOS's switch-to-configuration handles them (see the header)
    switch_units() {
      failed=
      dir=/run/systemd/system
      mkdir -p "$dir"
      for link in "$dir"/*.service; do
        [ -L "$link" ] || continue
        unit=$(basename "$link")
        case $(readlink "$link") in /nix/store/*) ;; *) continue ;; esac
        if [ ! -e "$out/etc/systemd/system/$unit" ]; then
          systemctl stop "$unit" || true
          rm -f "$link"
        fi
      done
      changed=
      for file in "$out"/etc/systemd/system/*.service; do
        [ -e "$file" ] || continue
        unit=$(basename "$file")
        target=$(readlink "$file")
        if [ "$(readlink "$dir/$unit" 2>/dev/null)" != "$target" ]; then
          if [ -L "$dir/$unit" ]; then changed="$changed $unit"; fi
          ln -sfn "$target" "$dir/$unit"
        fi
      done
      systemctl daemon-reload
      for file in "$out"/etc/systemd/system/*.service; do
        [ -e "$file" ] || continue
        unit=$(basename "$file")
        case " $changed " in
          *" $unit "*) systemctl restart "$unit" || failed="$failed $unit" ;;
          *) systemctl is-active --quiet "$unit" || systemctl start "$unit" || failed="$failed $unit" ;;
        esac
      done
      if [ -n "$failed" ]; then
        echo "warning: the following units failed:$failed" >&2
        units_failed=1
      fi
    }

    start_http() {
      http_code='${httpCode}'
      setsid nohup python3 -c "$http_code" standin-http "$1" \
        < /dev/null >> /run/standin-http.log 2>&1 &
      pid=$!
      i=0
      until [ -s /run/standin-http.pid ]; do
        if ! alive "$pid" || [ $i -ge 1000 ]; then
          echo "standin: the health server on 127.0.0.1:$1 did not start (see /run/standin-http.log)" >&2
          exit 1
        fi
        sleep 0.01; i=$((i + 1))
      done
    }

    # GRUB's menu entry TITLE for the system SYSTEM (a profile link), as install-grub.pl's addEntry
    grub_entry() {
      sys=$(readlink -f "$2")
      echo "menuentry \"$1\" --class nixos --unrestricted {"
      echo "  linux $(readlink -f "$sys/kernel") init=$sys/init $(cat "$sys/kernel-params")"
      echo "  initrd $(readlink -f "$sys/initrd")"
      echo "}"
    }

    # /boot/grub/grub.cfg from the system profile, as NixOS's install-grub.pl writes it
    install_grub() {
      profile=/nix/var/nix/profiles/system
      {
        echo "# Automatically generated.  DO NOT EDIT THIS FILE! (the lab's stand-in of install-grub.pl)"
        if [ ${grubEnv} = 1 ]; then
        echo 'if [ -s $prefix/grubenv ]; then'
        echo '  load_env'
        echo 'fi'
        echo 'if [ "''${next_entry}" ]; then'
        echo '  set default="''${saved_entry}"'
        echo '  set default="''${next_entry}"'
        echo '  set next_entry='
        echo '  save_env next_entry'
        echo '  set timeout=1'
        echo '  set boot_once=true'
        echo 'else'
        echo '  set default=${grubDefault}'
        echo '  set timeout=5'
        echo 'fi'
        else
          echo 'set default=${grubDefault}'
        fi
        grub_entry "NixOS - Default" "$profile"
        echo 'submenu "NixOS - All configurations" --class submenu {'
        for n in $(for link in "$profile"-*-link; do
                     [ -L "$link" ] || continue; n=''${link#"$profile"-}; echo "''${n%-link}"
                   done | sort -rn); do
          grub_entry "NixOS - Configuration $n ($(date -r "$profile-$n-link" +%F) - standin)" "$profile-$n-link"
        done
        echo '}'
      } > /boot/grub/grub.cfg.tmp
      mv -f /boot/grub/grub.cfg.tmp /boot/grub/grub.cfg
    }

    units_failed=0
    if [ "$goal" = switch ] || [ "$goal" = boot ]; then
      # install the boot loader: the profile's system is the default boot entry
      if [ -d /boot/standin ]; then
        readlink -f /nix/var/nix/profiles/system > /boot/standin/default.tmp
        mv -f /boot/standin/default.tmp /boot/standin/default
      elif [ -d /boot/grub ]; then
        install_grub
      fi
    fi
    if [ "$goal" = switch ] || [ "$goal" = test ] || [ "$goal" = at-boot ]; then
      if [ "$goal" != at-boot ]; then ln -sfn $out /run/current-system; fi
      echo ${health} > /run/standin-health
      if [ -d /run/systemd/system ]; then
        rm -f /run/standin-http.pid
        switch_units
        if [ -n "${httpPort}" ] && [ $units_failed = 0 ]; then
          i=0
          until [ -s /run/standin-http.pid ]; do
            if ! systemctl is-active --quiet standin-http.service || [ $i -ge 1000 ]; then
              echo "standin: the health server on 127.0.0.1:${httpPort} did not start" >&2
              exit 1
            fi
            sleep 0.01; i=$((i + 1))
          done
        fi
      else
        stop_http
        if [ -n "${httpPort}" ]; then start_http "${httpPort}"; fi
      fi
      if [ ${if openssh then "1" else "0"} = 1 ]; then
        if [ -x /run/standin-sshd-start ]; then /run/standin-sshd-start; fi
      elif [ -x /run/standin-sshd-stop ]; then
        /run/standin-sshd-stop
      else
        echo "standin: services.openssh.enable = false but this host has no /run/standin-sshd-stop" >&2
      fi
    fi

    if [ "$goal" = at-boot ]; then exit $((units_failed * 4)); fi
    if [ $units_failed = 1 ]; then exit 4; fi
    if [ "$goal" != dry-activate ]; then
      case ${activation} in
        fail)
          echo "activation failed: standin.activation = fail" >&2
          exit 1 ;;
        hang)
          echo "activation started, now hanging: standin.activation = hang" >&2
          sleep 100000
          exit 1 ;;
      esac
    fi
    echo "$(date +%s.%N) $goal $out $(id -un)" >> /run/standin-activations.log
  '';

  toplevel = assert checked && unitsChecked; derivation (env // {
    name = "nixos-system-${name}";
    builder = sh;
    inherit payload nixConf buildLog switchScript unitLinks kernelFile initrdFile kernelParams bootMode;
    sleep = toString (std.buildSeconds or 0);
    evalCost = evalWork (std.evalCost or 0);
    passAsFile = [ "nixConf" "switchScript" ];
    args = [ "-c" ''
      set -e
      sleep "$sleep"
      mkdir -p $out/bin $out/etc/nix
      ln -s $payload $out/payload
      ln -s $kernelFile $out/kernel
      ln -s $initrdFile $out/initrd
      printf '%s' "$kernelParams" > $out/kernel-params
      if [ "$bootMode" = hang ]; then touch $out/standin-boot-hangs; fi
      cp "$nixConfPath" $out/etc/nix/nix.conf
      echo -n "${name}" > $out/name
      sed "s|@out@|$out|g" "$switchScriptPath" > $out/bin/switch-to-configuration
      chmod +x $out/bin/switch-to-configuration
      printf '#!/bin/sh\nexec %s/bin/switch-to-configuration at-boot\n' "$out" > $out/activate
      chmod +x $out/activate
      mkdir -p $out/etc/systemd/system
      eval "$unitLinks"
      if [ -n "$buildLog" ]; then echo "${name}" >> "$buildLog"; fi
    '' ];
  });
in
{
  config = config // { system = (config.system or { }) // { build = { inherit toplevel; }; }; };
  inherit pkgs;
  options = { };
  system = toplevel;
}
