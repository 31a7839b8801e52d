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
# 5. on success, appends "<epoch> <goal> <path> <user>" to /run/standin-activations.log (but
#    see "The NixOS-like switch-to-configuration" below: its dry-activate and check do not).
#
# Modules: attribute sets or functions of { config, lib, pkgs, ... }, with imports; a module that
# declares `options` (lib.mkOption's `default` is all the stand-in reads of them: no types are
# checked) or `config` has its settings in `config`, as NixOS's full form (nix/agent.nix is
# one). Every option's default comes first, then the modules' settings, merged: attribute sets
# by name, lists concatenated, else the last one. lib.mkIf COND SET is pushed down one level
# (each attribute of SET is there, { } when COND is false), so COND may read the settings.
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
#
# What a switch will change (issue 31). All opt-in: a system that uses none of the options below
# keeps the very store path it had before they existed (its switch-to-configuration is the one
# described above; tests/test_standin.py pins a few such paths).
# - standin.packages = { NAME = "VERSION"; NAME = { version = "VERSION"; bytes = N; }; }: each a
#   store path named exactly NAME-VERSION holding $out/lib/NAME/NAME, N bytes (default 4096) of
#   SHAKE-256 of "NAME-VERSION" (the same content in every build); the toplevel links
#   $out/sw/NAME to it, so it is in the closure. The same NAME, VERSION and bytes give the same
#   path in every system; another version changes that package's path (and the toplevel's).
#   NAME: letters, digits and _ + . - (not first); VERSION: letters, digits and _ + . -.
# - standin.systemdVersion = "VERSION" (default: none): $out/systemd links to a package
#   systemd-VERSION (as above, its file at lib/systemd/systemd, 4096 bytes); none: no link.
# - systemd.services.<name>: restartIfChanged (default true), reloadIfChanged (default false),
#   stopIfChanged (default true), reload (a script: ExecReload=/bin/sh <its file>). Written into
#   the unit's [Service] as NixOS's systemd-lib.nix (serviceToUnit) writes them:
#   X-ReloadIfChanged=true, else X-RestartIfChanged=false when restartIfChanged = false; and
#   X-StopIfChanged=false. A unit without these options keeps its file as before. (NixOS
#   requires no reload script for reloadIfChanged; without one a reload fails, as on NixOS.)
#   systemd.services.sshd is refused: sshd's unit is the next option's.
# - systemd.services.<name>.startLimitIntervalSec and unitConfig = { K = V; }: lines in [Unit].
#   systemd.services.<name>.environment = { K = "V"; } and serviceConfig's keys other than Type
#   (e.g. RemainAfterExit = false, which a oneshot then has instead of the stand-in's yes): lines
#   Environment="K=V" (% doubled) and KEY=VALUE (booleans true/false) in [Service] (only units
#   that set them). systemd.timers.<name>.timerConfig = { OnUnitActiveSec = "5min"; … }:
#   $out/etc/systemd/system/<name>.timer ([Timer] KEY=VALUE lines); any timer gives the
#   system the NixOS-like switch below, whose switch links the timers into /run/systemd/system
#   and starts those not active, and does not start a service that has a timer of its name (as
#   NixOS: such a service is wanted by nothing, its timer starts it; and a running oneshot
#   would hold the switch's `systemctl start` until it ends).
# - services.openssh.settings = { KEY = VALUE; } and/or services.openssh.extraConfig = "…"
#   (with openssh enabled, the default): the system gets an sshd_config (settings as "KEY VALUE"
#   lines, sorted, booleans as yes/no, lists joined by spaces, then extraConfig, as NixOS's
#   sshd.nix; linked as $out/etc/ssh/sshd_config) and an sshd.service unit as NixOS's openssh
#   module makes it: X-Restart-Triggers=<that sshd_config> in [Unit] (NixOS: restartTriggers,
#   so another configuration changes the unit) and X-StopIfChanged=false (NixOS: stopIfChanged
#   = false), so dry-activate reports it like any unit (restarted when its settings change). It
#   never touches the lab's sshd, the test's only way in: the unit file is never linked into
#   /run/systemd/system and switch/test never run systemctl on sshd.service (they print it in
#   NixOS's lines like the others); sshd is still handled through the lab's hooks
#   /run/standin-sshd-start and -stop by services.openssh.enable, as above (start: a no-op while
#   the lab's sshd runs). On a host whose PID 1 is systemd the lab's own sshd.service (in
#   /etc/systemd/system) is what counts as active.
# - system.switch.inhibitors = { NAME = "STRING"; } (even { }): written as JSON (keys sorted) to
#   a store file linked as $out/switch-inhibitors (NixOS's name: switchable-system.nix links
#   build.inhibitSwitch there), and the pre-switch check below. NixOS (since #477800) writes
#   that file and runs that check for every system, with { } when there are no inhibitors; the
#   stand-in only for systems that set the option, so that the others keep their paths.
# - standin.nixosSwitch = true: the NixOS-like switch-to-configuration below with none of the
#   options above (default: true when any of them is used; false with any of them is an error).
#
# The NixOS-like switch-to-configuration (a system using any option above, or nixosSwitch):
# the steps 1-5 above, with these additions (the strings are NixOS's, each taken from the source
# named; the logic is written for the stand-in, copied from none of them):
# a. the pre-switch check, right after the host-wide hooks of step 2, for a system with
#    system.switch.inhibitors and unless NIXOS_NO_CHECK=1 is in the environment (then no check
#    and no line at all, as switch-to-configuration-ng skips its PRE_SWITCH_CHECK). As
#    switchable-system.nix's preSwitchChecks.switchInhibitors after #477800 and #510514 does,
#    with its output on stderr (the wrapper in nixos/modules/system/activation/
#    pre-switch-check.nix runs each check with `>&2`): boot and dry-activate print "Not checking switch inhibitors
#    (action = GOAL)" and go on (#510514 added dry-activate); switch, test and check print
#    "Checking switch inhibitors..." then compare the running system's
#    /run/current-system/switch-inhibitors with this one's (a missing file counts as { }; a file
#    that is not JSON fails the check, as jq does after #510514): no inhibitor present in both
#    with another value: " done" ends the line; else the refusal, each line on stderr:
#      (an empty line ending "Checking switch inhibitors...")
#      There are changes to critical components of the system:
#      (empty)  then "NAME : OLD -> NEW" for each such inhibitor (in the running system's order,
#      sorted)  then (empty)
#      Switching into this system is not recommended.
#      You probably want to run 'nixos-rebuild boot' and reboot your system instead.
#      (empty)
#      If you really want to switch into this configuration directly, then
#      you can set NIXOS_NO_CHECK=1 to ignore pre-switch checks.
#      (empty)
#      WARNING: doing so might cause the switch to fail or your system to become unstable.
#      (empty)
#      Pre-switch check 'switchInhibitors' failed     (pre-switch-check.nix's wrapper)
#      Pre-switch checks failed                       (switch-to-configuration-ng's main.rs)
#    and exits 1 (ng's die(): 1, as issue NixOS/nixpkgs#477504 shows), changing nothing but the
#    step-1 line of the starts log. A system without inhibitors checks nothing.
# b. a new goal, check (ng's): step 1, the hooks, the pre-switch check, then exit 0 (no line in
#    activations.log).
# c. the unit plan (NixOS manual, "Unit handling"; ng's main.rs: get_active_units,
#    compare_units, handle_modified_unit), computed for switch, test and dry-activate from the
#    running system's units (/run/current-system/etc/systemd/system, *.service) against this
#    system's, changing nothing. A unit counts if it is active or activating
#    (`systemctl is-active`) on a host whose PID 1 is systemd (/run/systemd/system exists); on a
#    host without systemd every unit of the running system counts. For each: gone from this
#    system (or linked to /dev/null) -> stop, unless [Unit] X-StopOnRemoval is false; else the
#    two files parsed and compared as NixOS does ([Install] left out, the [Unit] keys NixOS
#    ignores left out: Description, Documentation, OnFailure, OnSuccess, OnFailureJobMode,
#    IgnoreOnIsolate, StopWhenUnneeded, RefuseManualStart, RefuseManualStop, AllowIsolate,
#    CollectMode, SourcePath; so a unit whose Description names another system is unchanged):
#    only [Unit] X-Reload-Triggers differs -> reload; anything else differs -> [Service]
#    X-ReloadIfChanged (and not already to restart or stop) -> reload; else X-RestartIfChanged
#    false, or [Unit] RefuseManualStop or X-OnlyManualStart true -> skip (not stopped); else
#    X-StopIfChanged false -> restart; else stop, then start. A unit new in this system is in
#    no list: NixOS starts it by starting the active targets (dry-activate does not name it;
#    switch names it afterwards, below). Not modelled: targets, sockets (and socket-activated
#    services), mounts, swap, fstab, template units, the activation script's restart/reload
#    lists, /run/nixos's record of the lists, user units.
#    Systemd itself: restarted when this system has $out/systemd and its lib/systemd/systemd is
#    another file than the running system's (NixOS compares /proc/1/exe with the new systemd's
#    lib/systemd/systemd, and /etc/systemd/system.conf: a lab host's PID 1 is no store path, so
#    the running system's systemd stands for it; a running system without $out/systemd differs;
#    this system without it: no decision, no line).
# d. dry-activate prints on stderr, in this order (ng's dry-activate branch; units sorted by
#    lowercased name, joined by ", "; a list's line only if it has units), then exits 0 with no
#    line in activations.log (only step 1's in the starts log; other systems' dry-activate still
#    writes both) and nothing else changed on the host:
#      would stop the following units: A, B
#      would NOT stop the following changed units: …     (the skipped)
#      would activate the configuration...               (always)
#      would restart systemd
#      would reload the following units: …
#      would restart the following units: …
#      would start the following units: …               (the stopped-then-started)
# e. switch and test print ng's lines on stderr and do what they say on a systemd host (on one
#    without systemd they print them and run no unit, as before): "stopping the following
#    units: …" (stopped before the activation of step 3), "NOT restarting the following changed
#    units: …", "activating the configuration...", then step 3, "restarting systemd..." (printed
#    only: the lab's PID 1 is not re-executed), "restarting sysinit-reactivation.target" (printed
#    only), "reloading the following units: …" (a unit to reload that is no longer active is
#    started instead, as ng does), "restarting the following units: …", "starting the following
#    units: …"; on a systemd host the unit files are linked into /run/systemd/system as before,
#    then `systemctl reset-failed`, daemon-reload, the jobs, then every unit of this system not
#    active is started (what NixOS's start of the active targets does), then "the following new
#    units were started: …" (units active now that were not before) and "warning: the
#    following units failed: …" (exit 4, as before; so does "Failed to JOB UNIT" when a job
#    fails). An unchanged standin-http.service keeps running (its pid file is rewritten). The
#    activation at boot ($out/activate) links, reloads and starts the same way, printing only
#    the failed units.
{ configuration, system ? builtins.currentSystem, specialArgs ? { } }:
let
  lib = import ../lib.nix;
  pkgs = import ../default.nix { inherit system; };
  args = specialArgs // { inherit config lib pkgs system; modulesPath = toString ./.; options = { }; };
  load = m:
    if builtins.isPath m || builtins.isString m then load (import m)
    else if builtins.isFunction m then m args
    else m;
  modules = m: let v = load m; in [ v ] ++ builtins.concatMap modules (v.imports or [ ]);
  # a module's settings: its `config` when it declares options or config (NixOS's full form),
  # else the module itself
  body = v: if v ? options || v ? config then v.config or { } else builtins.removeAttrs v [ "imports" "options" ];
  # the defaults of a module's options (lib.mkOption's `default`), as settings
  isOption = o: builtins.isAttrs o && (o._type or null) == "option";
  defaults = opts: builtins.listToAttrs (builtins.concatMap (n: let o = opts.${n}; in
    if isOption o then (if o ? default then [ { name = n; value = o.default; } ] else [ ])
    else if builtins.isAttrs o then [ { name = n; value = defaults o; } ] else [ ]) (builtins.attrNames opts));
  loaded = modules configuration;
  # lib.mkIf COND { A = …; } is pushed down one level (A = if COND then … else { }), so that the
  # names of a module's settings are known without COND, which may read the settings
  unwrap = v: if !(builtins.isAttrs v) then v
    else if v ? _merge then mergeAll v._merge
    else if (v._type or null) == "if" then
      (if builtins.isAttrs v.content && !(v.content ? _type) && !(v.content ? _merge)
       then builtins.mapAttrs (_: x: if v.condition then x else { }) v.content
       else if v.condition then unwrap v.content else { })
    else v;
  leafOff = v: builtins.isAttrs v && (v._type or null) == "if" && !(builtins.isAttrs v.content) && !v.condition;
  mergeAll = vs0:
    let vs = map unwrap (builtins.filter (v: !(leafOff v)) vs0); in
    if builtins.all builtins.isAttrs vs then builtins.zipAttrsWith (_: mergeAll) vs
    else if builtins.all builtins.isList vs then builtins.concatLists vs
    else lib.last vs;
  # every option's default first: what a module sets wins
  config = mergeAll (builtins.concatMap (v: if v ? options then [ (defaults v.options) ] else [ ]) loaded
    ++ map body loaded);

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

  # Units: systemd.services.<name>, plus the health server's (standin.httpPort) and sshd's
  # (services.openssh.settings / extraConfig).
  declared = config.systemd.services or { };
  # NixOS's per-unit switch options (systemd-lib.nix's serviceToUnit writes them into [Service])
  switchKeys = [ "restartIfChanged" "reloadIfChanged" "stopIfChanged" "reload" ];
  unitsChecked = builtins.all (n: let u = declared.${n}; in
    if builtins.match "[A-Za-z0-9_-]+" n == null then throw "systemd.services: bad unit name ${builtins.toJSON n}"
    else if n == "sshd" then throw "systemd.services.sshd: the stand-in's sshd.service comes from services.openssh.settings or extraConfig"
    else if !(u ? script) then throw "systemd.services.${n}: a stand-in unit needs a script"
    else if !(builtins.all (k: !(u ? ${k}) || builtins.isBool u.${k}) [ "restartIfChanged" "reloadIfChanged" "stopIfChanged" ])
    then throw "systemd.services.${n}: restartIfChanged, reloadIfChanged and stopIfChanged are booleans"
    else if u ? reload && !(builtins.isString u.reload) then throw "systemd.services.${n}.reload must be a script (a string)"
    else true) (builtins.attrNames declared);
  unitFile = n: type: exec: extra: unitExtra: builtins.toFile "${n}.service" (''
    [Unit]
    Description=stand-in unit ${n} of ${name}
    ${unitExtra}[Service]
    Type=${type}
    ${if type == "oneshot" && builtins.length (builtins.split "RemainAfterExit=" extra) == 1 then "RemainAfterExit=yes" else ""}
    ExecStart=${exec}
  '' + extra);
  # what NixOS writes for the switch options (reloadIfChanged wins over restartIfChanged)
  switchLines = n: u:
    (if u.reloadIfChanged or false then "X-ReloadIfChanged=true\n"
     else if !(u.restartIfChanged or true) then "X-RestartIfChanged=false\n" else "")
    + (if !(u.stopIfChanged or true) then "X-StopIfChanged=false\n" else "")
    + (if u ? reload then "ExecReload=/bin/sh ${builtins.toFile "${n}-reload.sh" u.reload}\n" else "");
  # environment and serviceConfig's other keys, as NixOS writes them (only units that set them)
  unitValue = v: if builtins.isBool v then (if v then "true" else "false") else toString v;
  serviceLines = u:
    builtins.concatStringsSep "" (map (k: "Environment=\"${k}=${builtins.replaceStrings [ "%" ] [ "%%" ]
      (unitValue u.environment.${k})}\"\n") (builtins.attrNames (u.environment or { })))
    + builtins.concatStringsSep "" (map (k: "${k}=${unitValue u.serviceConfig.${k}}\n")
      (builtins.filter (k: k != "Type") (builtins.attrNames (u.serviceConfig or { }))));
  # [Unit]: startLimitIntervalSec and unitConfig, as NixOS writes them (only units that set them)
  unitLines = u: (if u ? startLimitIntervalSec then "StartLimitIntervalSec=${toString u.startLimitIntervalSec}\n" else "")
    + builtins.concatStringsSep "" (map (k: "${k}=${unitValue u.unitConfig.${k}}\n")
      (builtins.attrNames (u.unitConfig or { })));
  httpFile = builtins.toFile "standin-http.py" httpCode;
  units = builtins.mapAttrs (n: u: unitFile n (u.serviceConfig.Type or "simple")
      "/bin/sh ${builtins.toFile "${n}.sh" u.script}" (switchLines n u + serviceLines u) (unitLines u)) declared
    // (if httpPort == "" then { } else {
      standin-http = unitFile "standin-http" "simple" "/usr/bin/python3 ${httpFile} standin-http ${httpPort}" "" "";
    })
    // (if sshdUnit == null then { } else { sshd = sshdUnit; });
  # systemd.timers.<name>.timerConfig: <name>.timer, started by the switch; the service it
  # starts is not (NixOS: a timer's service is wanted by nothing)
  timers = config.systemd.timers or { };
  timerFiles = builtins.mapAttrs (n: t: builtins.toFile "${n}.timer" (''
    [Unit]
    Description=stand-in timer ${n}
    [Timer]
  '' + builtins.concatStringsSep "" (map (k: "${k}=${unitValue t.timerConfig.${k}}\n")
      (builtins.attrNames (t.timerConfig or { }))))) timers;
  unitLinks = builtins.concatStringsSep "\n" (builtins.attrValues (builtins.mapAttrs
    (n: f: "ln -s ${f} $out/etc/systemd/system/${n}.service") units)
    ++ builtins.attrValues (builtins.mapAttrs (n: f: "ln -s ${f} $out/etc/systemd/system/${n}.timer") timerFiles));
  # the switch's lines for timers (none without: the other systems keep their paths)
  timerLink = if timers == { } then "" else ''
    for file in "$out"/etc/systemd/system/*.timer; do
            target=$(readlink "$file")
            if [ "$(readlink "$dir/$(basename "$file")" 2>/dev/null)" != "$target" ]; then ln -sfn "$target" "$dir/$(basename "$file")"; fi
          done
          '';
  timerStart = if timers == { } then "" else ''
    for file in "$out"/etc/systemd/system/*.timer; do
            systemctl is-active --quiet "$(basename "$file")" || nx_job start "$(basename "$file")"
          done
          '';
  timedSkip = if timers == { } then "" else ''[ ! -e "$out/etc/systemd/system/''${unit%.service}.timer" ] || continue
          '';

  # sshd.service, as NixOS's openssh module makes it (settings, then extraConfig; restarted when
  # sshd_config changes, never stopped and started); only with settings or extraConfig.
  ssh = config.services.openssh or { };
  sshdConfigText = builtins.concatStringsSep "" (builtins.attrValues (builtins.mapAttrs (k: v:
    "${k} ${if builtins.isBool v then (if v then "yes" else "no")
            else if builtins.isList v then builtins.concatStringsSep " " (map toString v)
            else toString v}\n") (ssh.settings or { }))) + (ssh.extraConfig or "");
  sshdConfig = builtins.toFile "sshd_config" sshdConfigText;
  sshdUnit = if !(openssh && (ssh ? settings || ssh ? extraConfig)) then null
    else builtins.toFile "sshd.service" ''
      [Unit]
      After=network.target
      Description=SSH Daemon
      X-Restart-Triggers=${sshdConfig}

      [Service]
      X-StopIfChanged=false
      ExecStart=/usr/sbin/sshd -D -f /etc/ssh/sshd_config
      KillMode=process
      Restart=always
      Type=simple
    '';

  # Packages with versions, systemd's version, switch inhibitors (see the header).
  packageSpecs = builtins.mapAttrs (n: v:
    let spec = if builtins.isString v then { version = v; } else v; in
    if builtins.match "[A-Za-z0-9_+][A-Za-z0-9_+.-]*" n == null then throw "standin.packages: bad package name ${builtins.toJSON n}"
    else if !(builtins.isAttrs spec && spec ? version && builtins.isString spec.version
              && builtins.match "[A-Za-z0-9_+.-]+" spec.version != null)
    then throw "standin.packages.${n} must be a version string (letters, digits, + . _ -) or { version = \"…\"; bytes = N; }"
    else if !(builtins.isInt (spec.bytes or 4096)) || (spec.bytes or 4096) < 0 then throw "standin.packages.${n}.bytes must be a number of bytes"
    else { inherit (spec) version; bytes = spec.bytes or 4096; }) (std.packages or { });
  # one store path per name, version and size, shared by every system that has it:
  # $out/lib/NAME/NAME holds BYTES bytes of SHAKE-256 of "NAME-VERSION" (the same in every build)
  package = n: spec: derivation (env // {
    name = "${n}-${spec.version}";
    builder = sh;
    pname = n;
    seed = "${n}-${spec.version}";
    bytes = toString spec.bytes;
    args = [ "-c" ''
      set -e
      mkdir -p "$out/lib/$pname"
      python3 -c 'import hashlib, os, sys; sys.stdout.buffer.write(hashlib.shake_256(os.environ["seed"].encode()).digest(int(os.environ["bytes"])))' > "$out/lib/$pname/$pname"
    '' ];
  });
  packages = builtins.mapAttrs package packageSpecs;
  systemdVersion = std.systemdVersion or null;
  systemdPackage = if systemdVersion == null then null
    else if !(builtins.isString systemdVersion) || builtins.match "[A-Za-z0-9_+.-]+" systemdVersion == null
    then throw "standin.systemdVersion must be a version string (letters, digits, + . _ -)"
    else package "systemd" { version = systemdVersion; bytes = 4096; };
  inhibitors = config.system.switch.inhibitors or null;
  inhibitorsFile = if inhibitors == null then null
    else if !(builtins.isAttrs inhibitors && builtins.all builtins.isString (builtins.attrValues inhibitors))
    then throw "system.switch.inhibitors must be an attribute set of strings"
    else builtins.toFile "switch-inhibitors" (builtins.toJSON inhibitors);
  # Any of these options gives the system the NixOS-like switch-to-configuration (see the
  # header); a system without them keeps the store path it had before they existed.
  usesSwitchOptions = packageSpecs != { } || systemdVersion != null || inhibitors != null
    || ssh ? settings || ssh ? extraConfig
    || builtins.any (n: builtins.any (k: declared.${n} ? ${k}) switchKeys) (builtins.attrNames declared)
    || timers != { };
  nixosSwitch = let v = std.nixosSwitch or usesSwitchOptions; in
    if !(builtins.isBool v) then throw "standin.nixosSwitch must be a boolean"
    else if !v && usesSwitchOptions then throw "standin.nixosSwitch = false, but the system uses options that need it (see tests/nixpkgs/nixos/default.nix)"
    else v;
  # the toplevel's links to them: $out/sw/NAME, $out/systemd, $out/switch-inhibitors, $out/etc/ssh/sshd_config
  extraLinks = builtins.concatStringsSep "" (
    (if packages == { } then [ ] else [ "mkdir -p $out/sw\n" ])
    ++ builtins.attrValues (builtins.mapAttrs (n: p: "ln -s ${p} $out/sw/${n}\n") packages)
    ++ (if systemdPackage == null then [ ] else [ "ln -s ${systemdPackage} $out/systemd\n" ])
    ++ (if inhibitorsFile == null then [ ] else [ "ln -s ${inhibitorsFile} $out/switch-inhibitors\n" ])
    ++ (if sshdUnit == null then [ ] else [ "mkdir -p $out/etc/ssh\nln -s ${sshdConfig} $out/etc/ssh/sshd_config\n" ]));

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

  # The NixOS-like switch-to-configuration (standin.nixosSwitch): pieces of shell put into
  # switchScript below, each empty for the other systems (whose scripts stay as they were).
  # The new goal `check` (run the pre-switch check only):
  nxGoals = if nixosSwitch then "check) ;;\n" else "";
  # After the host-wide hooks: the pre-switch check (system.switch.inhibitors), then `check` ends.
  nxPre = if !nixosSwitch then "" else (if inhibitorsFile == null then "" else ''
    # switchInhibitors, NixOS's pre-switch check (switchable-system.nix): output on stderr
    nx_inhibitors() {
      case "$goal" in
        boot|dry-activate) echo "Not checking switch inhibitors (action = $goal)"; return 0 ;;
      esac
      printf '%s' "Checking switch inhibitors..."
      changed=$(python3 -c '${inhibitorsPy}' /run/current-system/switch-inhibitors "$out/switch-inhibitors") || return 1
      if [ -z "$changed" ]; then echo " done"; return 0; fi
      echo
      echo "There are changes to critical components of the system:"
      echo
      echo "$changed"
      echo
      echo "Switching into this system is not recommended."
      echo "You probably want to run 'nixos-rebuild boot' and reboot your system instead."
      echo
      echo "If you really want to switch into this configuration directly, then"
      echo "you can set NIXOS_NO_CHECK=1 to ignore pre-switch checks."
      echo
      echo "WARNING: doing so might cause the switch to fail or your system to become unstable."
      echo
      return 1
    }
    if [ "''${NIXOS_NO_CHECK:-}" != 1 ]; then
      if ! nx_inhibitors >&2; then
        echo "Pre-switch check 'switchInhibitors' failed" >&2
        echo "Pre-switch checks failed" >&2
        exit 1
      fi
    fi
  '') + ''
    if [ "$goal" = check ]; then exit 0; fi

  '';
  # "KEY : OLD -> NEW" for each inhibitor of both systems whose value changed (a missing file: no
  # inhibitors; a file that is not JSON fails the check)
  inhibitorsPy = ''
    import json, sys
    def load(path):
        try:
            with open(path) as f:
                return json.load(f)
        except FileNotFoundError:
            return {}
    old, new = load(sys.argv[1]), load(sys.argv[2])
    for key, value in old.items():
        if key in new and new[key] != value:
            print(key, ":", value, "->", new[key])
  '';
  # Before the main flow: the unit plan of NixOS's switch-to-configuration (the NixOS manual's
  # "Unit handling"), dry-activate's report, and switch_units redefined to act on the plan.
  nxMain = if !nixosSwitch then "" else ''
    # A unit file as switch-to-configuration compares it: "SECTION<TAB>KEY<TAB>VALUES" lines,
    # sorted; [Install] left out; an empty value clears the key's values; "SECTION<TAB>" for each
    # section but [Unit]. MODE main leaves out the [Unit] keys NixOS ignores and
    # X-Reload-Triggers; MODE reload keeps X-Reload-Triggers only.
    nx_canon() {
      awk -v mode="$1" '
        BEGIN {
          n = split("Description Documentation OnFailure OnSuccess OnFailureJobMode IgnoreOnIsolate StopWhenUnneeded RefuseManualStart RefuseManualStop AllowIsolate CollectMode SourcePath", l, " ")
          for (i = 1; i <= n; i++) ignored[l[i]] = 1
        }
        /^[ \t]*$/ || /^[ \t]*[#;]/ { next }
        /^[ \t]*\[/ {
          s = $0; sub(/^[ \t]*\[/, "", s); sub(/\][ \t]*$/, "", s)
          if (mode == "main" && s != "Unit" && s != "Install") sections[s] = 1
          next
        }
        s == "" || s == "Install" { next }
        {
          i = index($0, "="); if (i == 0) next
          k = substr($0, 1, i - 1); v = substr($0, i + 1)
          gsub(/^[ \t]+|[ \t]+$/, "", k); gsub(/^[ \t]+|[ \t]+$/, "", v)
          if (s == "Unit" && k == "X-Reload-Triggers") { if (mode != "reload") next }
          else if (mode == "reload" || (s == "Unit" && k in ignored)) next
          key = s "\t" k
          if (v == "") vals[key] = ""
          else if ((key in vals) && vals[key] != "") vals[key] = vals[key] "\037" v
          else vals[key] = v
        }
        END { for (x in sections) print x "\t"; for (key in vals) print key "\t" vals[key] }
      ' "$2" | LC_ALL=C sort
    }
    # nx_compare OLD NEW: restart (they differ), reload (in X-Reload-Triggers only) or equal
    nx_compare() {
      if [ "$(nx_canon main "$1")" != "$(nx_canon main "$2")" ]; then echo restart
      elif [ "$(nx_canon reload "$1")" != "$(nx_canon reload "$2")" ]; then echo reload
      else echo equal; fi
    }
    # nx_bool FILE SECTION KEY DEFAULT(1|0): a boolean of a unit file, as NixOS reads it
    nx_bool() {
      v=$(awk -v want="$2" -v key="$3" '
        /^[ \t]*\[/ { s = $0; sub(/^[ \t]*\[/, "", s); sub(/\][ \t]*$/, "", s); next }
        s == want {
          i = index($0, "="); if (i == 0) next
          k = substr($0, 1, i - 1); gsub(/^[ \t]+|[ \t]+$/, "", k)
          if (k == key) { last = substr($0, i + 1); gsub(/^[ \t]+|[ \t]+$/, "", last) }
        }
        END { print last }' "$1")
      case "$v" in
        "") [ "$4" = 1 ] ;;
        1|yes|true|on) return 0 ;;
        *) return 1 ;;
      esac
    }
    nx_has() { case " $1 " in *" $2 "*) return 0 ;; esac; return 1; }
    nx_without() { r=; for x in $1; do [ "$x" = "$2" ] || r="$r $x"; done; echo "$r"; }
    # nx_list PREFIX UNITS: "PREFIX a.service, b.service" on stderr, sorted as NixOS sorts
    # (by the lowercased name), nothing without units
    nx_list() {
      case "$2" in *[!\ ]*) ;; *) return 0 ;; esac
      for x in $2; do echo "$x"; done | awk '{ print tolower($0), $0 }' | LC_ALL=C sort -s -k1,1 \
        | awk -v p="$1" '{ s = s (NR > 1 ? ", " : "") $2 } END { print p s }' >&2
    }
    nx_state() { systemctl is-active "$1" 2>/dev/null || true; }
    # nx_active UNIT: active for the plan (NixOS: active or activating); on a host without
    # systemd every unit of the current system counts as active
    nx_active() {
      [ -d /run/systemd/system ] || return 0
      case $(nx_state "$1") in active|activating) return 0 ;; esac
      return 1
    }
    # a changed unit (NixOS's handle_modified_unit, for services without socket activation)
    nx_modified() {
      if nx_bool "$2" Service X-ReloadIfChanged 0 && ! nx_has "$to_restart" "$1" && ! nx_has "$to_stop" "$1"; then
        nx_has "$to_reload" "$1" || to_reload="$to_reload $1"
      elif ! nx_bool "$2" Service X-RestartIfChanged 1 || nx_bool "$2" Unit RefuseManualStop 0 \
          || nx_bool "$2" Unit X-OnlyManualStart 0; then
        nx_has "$to_skip" "$1" || to_skip="$to_skip $1"
      elif ! nx_bool "$2" Service X-StopIfChanged 1; then
        nx_has "$to_restart" "$1" || to_restart="$to_restart $1"
        to_reload=$(nx_without "$to_reload" "$1")
      else
        nx_has "$to_start" "$1" || to_start="$to_start $1"
        nx_has "$to_stop" "$1" || to_stop="$to_stop $1"
        to_reload=$(nx_without "$to_reload" "$1")
      fi
    }
    # The plan: the current system's units against this one's (changing nothing)
    to_stop=''' to_skip=''' to_reload=''' to_restart=''' to_start=''' was_up=''' jobs_run=''' restart_systemd=0
    nx_plan() {
      cur=/run/current-system/etc/systemd/system
      new=$out/etc/systemd/system
      if [ -d /run/systemd/system ]; then  # what runs now, for "the following new units were started"
        for f in "$cur"/*.service "$new"/*.service; do
          u=$(basename "$f")
          case "$u" in '*.service') continue ;; esac
          case $(nx_state "$u") in inactive|"") ;; *) nx_has "$was_up" "$u" || was_up="$was_up $u" ;; esac
        done
      fi
      for f in "$cur"/*.service; do
        [ -e "$f" ] || continue
        u=$(basename "$f")
        nx_active "$u" || continue
        if [ ! -e "$new/$u" ] || [ "$(readlink -f "$new/$u")" = /dev/null ]; then
          if nx_bool "$f" Unit X-StopOnRemoval 1; then nx_has "$to_stop" "$u" || to_stop="$to_stop $u"; fi
          continue
        fi
        case $(nx_compare "$f" "$new/$u") in
          restart) nx_modified "$u" "$new/$u" ;;
          reload) nx_has "$to_restart" "$u" || nx_has "$to_reload" "$u" || to_reload="$to_reload $u" ;;
        esac
      done
      # NixOS: PID 1's binary against the new systemd's; here the current system's systemd
      if [ -e "$out/systemd" ] && [ "$(readlink -f /run/current-system/systemd/lib/systemd/systemd 2>/dev/null || true)" \
          != "$(readlink -f "$out/systemd/lib/systemd/systemd")" ]; then
        restart_systemd=1
      fi
    }
    nx_dry_activate() {
      nx_list "would stop the following units: " "$to_stop"
      nx_list "would NOT stop the following changed units: " "$to_skip"
      echo "would activate the configuration..." >&2
      if [ $restart_systemd = 1 ]; then echo "would restart systemd" >&2; fi
      nx_list "would reload the following units: " "$to_reload"
      nx_list "would restart the following units: " "$to_restart"
      nx_list "would start the following units: " "$to_start"
    }
    # nx_job JOB UNIT: systemctl JOB UNIT (never sshd.service: the lab's hooks handle sshd)
    nx_job() {
      [ "$2" != sshd.service ] || return 0
      jobs_run="$jobs_run $2"
      systemctl "$1" "$2" || { echo "Failed to $1 $2" >&2; units_failed=1; }
    }
    # switch and test, before the activation: stop what the plan stops
    nx_before_activation() {
      nx_list "stopping the following units: " "$to_stop"
      if [ -d /run/systemd/system ]; then
        for u in $to_stop; do [ "$u" = sshd.service ] || systemctl stop "$u" || true; done
      fi
      nx_list "NOT restarting the following changed units: " "$to_skip"
      echo "activating the configuration..." >&2
    }
    # switch and test on a host without systemd: what NixOS would print, nothing done
    nx_after_activation() {
      if [ $restart_systemd = 1 ]; then echo "restarting systemd..." >&2; fi
      echo "restarting sysinit-reactivation.target" >&2
      nx_list "reloading the following units: " "$to_reload"
      nx_list "restarting the following units: " "$to_restart"
      nx_list "starting the following units: " "$to_start"
    }
    # On a host whose PID 1 is systemd (switch, test and the activation at boot): install the
    # unit files, then reload, restart and start as the plan says, then start what is not
    # active (as NixOS's start of the active targets does); sshd.service is never touched.
    switch_units() {
      dir=/run/systemd/system
      mkdir -p "$dir"
      for link in "$dir"/*.service; do  # the stand-in's units that this system has not
        unit=$(basename "$link")
        if [ -L "$link" ] && [ ! -e "$out/etc/systemd/system/$unit" ] && readlink "$link" | grep -q '^/nix/store/'; then
          systemctl stop "$unit" 2>/dev/null || true; rm -f "$link"
        fi
      done
      for file in "$out"/etc/systemd/system/*.service; do
        [ -e "$file" ] || continue
        unit=$(basename "$file")
        [ "$unit" != sshd.service ] || continue
        target=$(readlink "$file")
        if [ "$(readlink "$dir/$unit" 2>/dev/null)" != "$target" ]; then ln -sfn "$target" "$dir/$unit"; fi
      done
      ${timerLink}if [ "$goal" != at-boot ] && [ $restart_systemd = 1 ]; then echo "restarting systemd..." >&2; fi
      systemctl reset-failed 2>/dev/null || true
      systemctl daemon-reload
      if [ "$goal" != at-boot ]; then echo "restarting sysinit-reactivation.target" >&2; fi
      reload=
      for u in $to_reload; do  # NixOS starts a unit to reload that is no longer active
        case $(nx_state "$u") in
          active|activating) reload="$reload $u" ;;
          *) nx_has "$to_start" "$u" || to_start="$to_start $u" ;;
        esac
      done
      nx_list "reloading the following units: " "$reload"
      for u in $reload; do nx_job reload "$u"; done
      nx_list "restarting the following units: " "$to_restart"
      for u in $to_restart; do nx_job restart "$u"; done
      nx_list "starting the following units: " "$to_start"
      for u in $to_start; do nx_job start "$u"; done
      for file in "$out"/etc/systemd/system/*.service; do
        [ -e "$file" ] || continue
        unit=$(basename "$file")
        ${timedSkip}systemctl is-active --quiet "$unit" || nx_job start "$unit"
      done
      ${timerStart}      # a health server left running keeps its pid file (the caller removed it)
      if ! nx_has "$jobs_run" standin-http.service && systemctl is-active --quiet standin-http.service; then
        systemctl show -p MainPID --value standin-http.service > /run/standin-http.pid
      fi
      new_units=''' failed_units='''
      for file in "$out"/etc/systemd/system/*.service; do
        [ -e "$file" ] || continue
        unit=$(basename "$file")
        case $(nx_state "$unit") in
          failed) failed_units="$failed_units $unit" ;;
          inactive|"") ;;
          *) nx_has "$was_up" "$unit" || new_units="$new_units $unit" ;;
        esac
      done
      if [ "$goal" != at-boot ]; then nx_list "the following new units were started: " "$new_units"; fi
      if [ -n "$failed_units" ]; then
        nx_list "warning: the following units failed: " "$failed_units"
        units_failed=1
      fi
    }
    case "$goal" in
      dry-activate) nx_plan; nx_dry_activate; exit 0 ;;
      switch|test) nx_plan ;;
    esac
  '';
  nxBeforeActivation = if nixosSwitch then "if [ \"$goal\" != at-boot ]; then nx_before_activation; fi\n" else "";
  nxAfterActivation = if nixosSwitch
    then "if [ \"$goal\" != at-boot ] && [ ! -d /run/systemd/system ]; then nx_after_activation; fi\n" else "";

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
      ${nxGoals}switch|boot|test|dry-activate) ;;
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

    ${nxPre}# alive PID: the process exists and is not a zombie
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

    ${nxMain}units_failed=0
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
      ${nxBeforeActivation}if [ "$goal" != at-boot ]; then ln -sfn $out /run/current-system; fi
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
      ${nxAfterActivation}if [ ${if openssh then "1" else "0"} = 1 ]; then
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

  toplevel = assert checked && unitsChecked; derivation (env // (if nixosSwitch then { inherit extraLinks; } else { }) // {
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
      ${if nixosSwitch then "eval \"$extraLinks\"\n" else ""}if [ -n "$buildLog" ]; then echo "${name}" >> "$buildLog"; fi
    '' ];
  });
in
{
  config = config // { system = (config.system or { }) // { build = { inherit toplevel; }; }; };
  inherit pkgs;
  options = { };
  system = toplevel;
}
