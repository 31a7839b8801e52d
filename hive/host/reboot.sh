#!/bin/sh
# nix-hive's reboots of one host (hive/reboot.py). Every value is an argument. `needs` and
# `booted` only read, as the ssh user; `start`, `keep` and `fall-back` run as root, through
#
#   reboot.sh root ID CALL ARGS...         this text on stdin (after elevate.sh's password line):
#                                          as_root writes it to /run/nix-hive/ID/reboot.sh and runs
#                                          `as_root sh /run/nix-hive/ID/reboot.sh CALL ARGS...`
#                                          (hive/host/elevate.sh, put before this text, defines
#                                          as_root: sudo, run0 or root itself; one fixed argv shape
#                                          a sudoers rule allows, hive/elevate.py, no `sh -c` as root);
#                                          the file removes itself when it starts
#
#   reboot.sh needs NEW                    would NEW run only after a reboot? Prints `needs WHAT...`
#                                          (kernel, initrd, kernel-params: those of NEW that differ
#                                          from /run/booted-system's, as nixos-needsreboot compares
#                                          them; switch-inhibitors: NixOS would refuse to switch
#                                          from the running system to NEW, hive/host/inhibitors.sh),
#                                          `needs unknown` (no /run/booted-system) or `needs` alone
#   reboot.sh start ID NEW LOCKWAIT WHO    install NEW for the next boot only, then reboot (NEW `-`:
#                                          the profile's system, read under the host lock; `start`
#                                          prints `system NEW` first)
#   reboot.sh booted BOOTID SECONDS        `waiting` while the host's boot id is still BOOTID (it has
#                                          not rebooted; `-`: no reboot to wait for); after the
#                                          reboot, wait (at most SECONDS) for the boot to finish and
#                                          print `booted PATH` (/run/current-system)
#   reboot.sh keep NEW                     make NEW (booted, healthy) the default boot entry
#   reboot.sh cancel BOOTID                a reboot asked for but not done (the boot id is still
#                                          BOOTID): clear the one-shot entry and forget the trial;
#                                          prints `cancelled PATH` (the system it runs), or
#                                          `rebooted` when it has rebooted after all (nothing done)
#   reboot.sh fall-back                    forget the trial and any one-shot entry left; reboot into
#                                          the default entry (the last good system) unless the host
#                                          runs it already: prints `rebooting PATH` or `on PATH`
#   reboot.sh grub-entry NEW CFG           the GRUB entry (`SUBMENU>TITLE`) of CFG that boots NEW
#
# `start` keeps the last good system the default entry: the generation of the system profile
# that the host runs now (else the profile's current one; a system the host runs on trial, booted
# once and never kept, is not good: the trial's own last good one stays). It adds NEW to the
# profile as a generation the profile does not point at, points the profile at the last good
# generation if it did not, installs the boot loader from there (NEW's entry is listed, the
# default is the last good one), and sets NEW's entry as the boot loader's one-shot entry:
#
#   systemd-boot   bootctl set-oneshot nixos-generation-N.conf
#   GRUB           grub-reboot 'SUBMENU>ENTRY' (NEW's entry of grub.cfg, found by its init=NEW/init):
#                  grubenv's next_entry, which NixOS's grub.cfg takes once whatever its default;
#                  a grub.cfg that never reads next_entry is refused. `keep` and `start` set the
#                  saved entry to the first one, the profile's (the default with
#                  boot.loader.grub.default = "saved"; 0 is that entry anyway)
#   the lab's      /boot/standin/oneshot (tests/lab/boot.py)
#
# A host that does not come back healthy therefore boots its last good system at its next
# boot, whoever or whatever reboots it. `start` writes /var/lib/nix-hive/reboot (NEW, its
# generation, the last good system and its generation, ID), which survives the reboot, and
# /run/nix-hive/reboot-ID, which does not (a later `start` tells a host on trial by both). It
# prints `boot-id BOOTID` (the kernel's /proc/sys/kernel/random/boot_id: nix-hive tells a host
# that rebooted by a new one), then `ready LOADER LASTGOOD` (or `same LASTGOOD`: NEW is the last
# good system, a plain reboot), or `resume LASTGOOD` when the host already runs NEW on trial (a
# run that died after the reboot: nothing to install, nor to reboot), then reboots (`systemctl
# --no-block reboot`). A reboot refused at once (a masked reboot.target, an inhibitor lock) undoes
# the one-shot entry and the trial, and prints `refused PATH WHY` (PATH: the system it runs on;
# `fall-back` says the same). Errors: `error WHY` on stdout, exit 3 (no boot loader found, nothing
# to fall back to), or `busy OWNER` when another activation holds the host's lock for LOCKWAIT
# seconds.
set -u
umask 022
PATH="/run/current-system/sw/bin:/nix/var/nix/profiles/default/bin:$PATH"
export PATH
profile=/nix/var/nix/profiles/system
runs=/run/nix-hive
record=/var/lib/nix-hive/reboot

fail() { echo "error $1"; exit 3; }

# not_runnable (hive/host/runnable.sh): in the text nix-hive sends, put there by hive/resources.py;
# read from beside this file where it runs as a file of the package
# shellcheck disable=SC1091
. "$(dirname "$0")/runnable.sh"
# inhibited (hive/host/inhibitors.sh), the same way
# shellcheck disable=SC1091
. "$(dirname "$0")/inhibitors.sh"

boot_id() { cat /proc/sys/kernel/random/boot_id 2>/dev/null; }

running() { readlink -f /run/current-system 2>/dev/null; }

gen_of() {  # PATH: the newest generation of the system profile that is PATH (empty: none)
  found=
  for link in "$profile"-*-link; do
    [ -L "$link" ] || continue
    n=${link#"$profile"-}
    n=${n%-link}
    if [ "$(readlink -f "$link")" = "$1" ] && { [ -z "$found" ] || [ "$n" -gt "$found" ]; }; then found=$n; fi
  done
  echo "$found"
}

current_gen() {  # the generation the system profile points at
  g=$(readlink "$profile" 2>/dev/null) || return 0
  g=${g#system-}
  echo "${g%-link}"
}

loader() {  # which boot loader this host boots with
  if [ -d /boot/standin ]; then echo standin
  elif command -v bootctl > /dev/null 2>&1 && bootctl is-installed > /dev/null 2>&1; then echo systemd-boot
  elif command -v grub-reboot > /dev/null 2>&1 && [ -f /boot/grub/grub.cfg ]; then echo grub
  else return 1
  fi
}

grub_entry() {  # NEW CFG: `SUBMENU>TITLE` of NEW's menu entry in CFG (grub.cfg)
  awk -v init="init=$1/init" '
    /^[ \t]*submenu / { match($0, /"[^"]*"/); sub_ = substr($0, RSTART + 1, RLENGTH - 2) }
    /^[ \t]*menuentry / { match($0, /"[^"]*"/); title = substr($0, RSTART + 1, RLENGTH - 2) }
    index($0, init) && sub_ != "" { print sub_ ">" title; exit }
  ' "$2"
}

oneshot() {  # LOADER NEW GEN: boot NEW once, at the next boot only
  case $1 in
    standin) echo "$2" > /boot/standin/oneshot.tmp && mv -f /boot/standin/oneshot.tmp /boot/standin/oneshot ;;
    systemd-boot) bootctl set-oneshot "nixos-generation-$3.conf" ;;
    grub)
      grep -q 'next_entry' /boot/grub/grub.cfg ||
        fail "GRUB's grub.cfg never reads grubenv's next_entry: it would ignore grub-reboot"
      entry=$(grub_entry "$2" /boot/grub/grub.cfg)
      [ -n "$entry" ] || fail "no GRUB entry boots $2"
      grub-set-default 0 && grub-reboot "$entry" ;;
  esac
}

clear_oneshot() {  # LOADER: undo `oneshot` (the default entry stays)
  case $1 in
    standin) rm -f /boot/standin/oneshot ;;
    systemd-boot) bootctl set-oneshot "" ;;
    grub) grub-editenv - unset next_entry ;;
  esac
}

default_entry() {  # LOADER: the first entry (the profile's system) is the default
  if [ "$1" = grub ]; then grub-set-default 0; fi
}

# Ask for the reboot. Refused (systemctl's exit status), it returns 1 with why in $refusal;
# accepted, the reboot may still never come (a shutdown that hangs): nix-hive sees the boot id.
reboot_now() {
  if [ -d /run/systemd/system ]; then
    refusal=$(systemctl --no-block reboot 2>&1 9>&-) && return 0
    refusal=$(printf '%s' "${refusal:-systemctl --no-block reboot failed}" | tr -s '\n\t' '  ')
    for unit in reboot.target systemd-reboot.service; do
      if [ "$(systemctl is-enabled "$unit" 2>/dev/null)" = masked ]; then refusal="$refusal ($unit is masked)"; fi
    done
    # `--list` shows every lock (it takes no filter): WHO and WHY may hold blanks, WHAT and MODE do not
    locks=$(systemd-inhibit --list --no-legend --no-pager 2>/dev/null |
      awk '$NF == "block" { for (i = 1; i < NF; i++) if ($i ~ /^(.*:)?shutdown(:.*)?$/) { n++; break } }
           END { print n + 0 }')
    if [ "${locks:-0}" -gt 0 ]; then refusal="$refusal ($locks inhibitor lock(s) block shutdown: systemd-inhibit --list)"; fi
    return 1
  fi
  setsid sh -c 'sleep 1; reboot' > /dev/null 2>&1 < /dev/null 9>&- &
}

# run from its file (a root call): the file goes now, the shell reads on from its open descriptor
case $0 in "$runs"/*/reboot.sh) rm -f "$0"; rmdir "${0%/*}" 2> /dev/null || : ;; esac
what=$1
shift
case $what in
  root)
    # as the ssh user; each as_root a command of this shell (elevate.sh: sudo's credential)
    d=$runs/$1
    shift
    as_root mkdir -p -m 755 "$runs" "$d"
    as_root tee "$d/reboot.sh" > /dev/null
    as_root sh "$d/reboot.sh" "$@"
    ;;
  needs)
    new=$1
    inhibits=
    [ -z "$(inhibited "$(readlink -f /run/current-system)" "$new")" ] || inhibits=" switch-inhibitors"
    if [ ! -e /run/booted-system ]; then echo "needs unknown$inhibits"; exit 0; fi
    out=needs$inhibits
    for f in kernel initrd; do
      [ "$(readlink -f "/run/booted-system/$f")" = "$(readlink -f "$new/$f")" ] || out="$out $f"
    done
    [ "$(cat /run/booted-system/kernel-params 2>/dev/null)" = "$(cat "$new/kernel-params" 2>/dev/null)" ] ||
      out="$out kernel-params"
    echo "$out"
    ;;
  start)
    id=$1; new=$2; lockwait=$3; who=$4
    # a dropped connection does not stop the install half-way; the word before the reboot then
    # finds no reader (SIGPIPE) and no reboot follows: none without a deployer to follow it
    trap '' HUP
    mkdir -p "$runs" "${record%/*}"
    exec 9< "$runs"
    if ! flock -w "$lockwait" 9; then echo "busy $(cat "$runs/owner" 2>/dev/null || echo unknown)"; exit 0; fi
    echo "reboot-$id started by $who at $(date -u +%Y-%m-%dT%H:%M:%SZ)" > "$runs/owner"
    # `-`: the system the profile names, read under the lock (nix-hive reboot): never a
    # profile read before another run's switch or rollback ended
    if [ "$new" = - ]; then new=$(readlink -f "$profile" 2>/dev/null) || fail "no system profile ($profile)"; fi
    echo "system $new"
    cur=$(running || true)
    bid=$(boot_id)
    [ -n "$bid" ] || fail "no boot id (/proc/sys/kernel/random/boot_id): nix-hive could not tell when it has rebooted"
    goodgen=
    if [ -f "$record" ]; then
      read -r rnew _ rgood rgoodgen rid < "$record" || true
      if [ "$cur" = "$rnew" ] && [ ! -e "$runs/reboot-$rid" ]; then  # it runs a system on trial
        if [ "$rnew" = "$new" ]; then echo "resume $rgood"; exit 0; fi
        # never kept, so never the last good one: that is still the trial's
        if [ "$(readlink -f "$profile-$rgoodgen-link" 2>/dev/null)" = "$rgood" ]; then goodgen=$rgoodgen; fi
      fi
    fi
    gone=$(not_runnable "$new" 9>&-)
    [ -z "$gone" ] || fail "$gone"
    kind=$(loader) || fail "no boot loader nix-hive can boot once found (systemd-boot's bootctl, GRUB's grub-reboot)"
    [ -n "$goodgen" ] || goodgen=$(gen_of "$cur")
    [ -n "$goodgen" ] || goodgen=$(current_gen)
    [ -n "$goodgen" ] || fail "no system profile to fall back to ($profile)"
    good=$(readlink -f "$profile-$goodgen-link")
    gone=$(not_runnable "$good" 9>&-)
    [ -z "$gone" ] || fail "the last good system $gone"
    newgen=$(gen_of "$new")
    if [ -z "$newgen" ]; then
      # a new generation, as `nix-env --set` makes it, but without pointing the profile at it:
      # whenever this stops, the profile (the next boot loader install's default) is the last good
      last=0
      for link in "$profile"-*-link; do
        n=${link#"$profile"-}
        n=${n%-link}
        case $n in *[!0-9]* | '') continue ;; esac
        if [ "$n" -gt "$last" ]; then last=$n; fi
      done
      newgen=$((last + 1))
      ln -s "$new" "$profile-$newgen-link" || fail "cannot add $new to the system profile"
    fi
    if [ "$(current_gen)" != "$goodgen" ]; then
      nix-env -p "$profile" --switch-generation "$goodgen" >&2 9>&- || fail "cannot put the profile back on $good"
    fi
    NIXOS_INSTALL_BOOTLOADER=0 "$good/bin/switch-to-configuration" boot >&2 9>&- ||
      fail "installing the boot loader failed ($good/bin/switch-to-configuration boot)"
    default_entry "$kind" >&2 || fail "cannot make $good the default boot entry"
    if [ "$new" = "$good" ]; then
      said="same $good"
    else
      oneshot "$kind" "$new" "$newgen" >&2 || fail "cannot set the one-shot boot entry ($kind)"
      said="ready $kind $good"
    fi
    echo "$new $newgen $good $goodgen $id" > "$record.tmp" && mv -f "$record.tmp" "$record"
    touch "$runs/reboot-$id"
    sync
    echo "boot-id $bid"
    echo "$said"
    if ! reboot_now; then  # refused: nothing happened, nothing stays of the trial
      if [ "$new" != "$good" ]; then clear_oneshot "$kind" >&2; fi
      rm -f "$record" "$runs/reboot-$id"
      sync
      echo "refused ${cur:--} $refusal"
    fi
    ;;
  keep)
    new=$1
    mkdir -p "$runs"
    exec 9< "$runs"
    flock -w 60 9 || fail "another activation holds the host's lock"
    gen=$(gen_of "$new")
    [ -n "$gen" ] || fail "$new is no generation of the system profile any more"
    kind=$(loader) || fail "no boot loader found"
    gone=$(not_runnable "$new" 9>&-)
    [ -z "$gone" ] || fail "$gone"
    nix-env -p "$profile" --switch-generation "$gen" >&2 9>&- || fail "cannot switch the profile to $new"
    NIXOS_INSTALL_BOOTLOADER=0 "$new/bin/switch-to-configuration" boot >&2 9>&- || {
      # back to the last good generation, if the host can still run it (else the profile stays on
      # the new system, which runs)
      good=$(cut -d' ' -f4 "$record" 2>/dev/null)
      if [ -n "$good" ] && [ -z "$(not_runnable "$(readlink -f "$profile-$good-link")" 9>&-)" ]; then
        nix-env -p "$profile" --switch-generation "$good" >&2 9>&-
      fi
      fail "installing the boot loader for $new failed"
    }
    default_entry "$kind" >&2
    rm -f "$record"
    echo kept
    ;;
  booted)
    was=$1; seconds=$2
    # the same boot id is the same boot, whatever else it says (a shutdown under way, or none)
    if [ "$was" != - ] && [ "$(boot_id)" = "$was" ]; then echo waiting; exit 0; fi
    if [ -d /run/systemd/system ]; then
      timeout "$seconds" systemctl is-system-running --wait > /dev/null 2>&1
    fi
    echo "booted $(readlink -f /run/current-system 2>/dev/null)"
    ;;
  cancel)
    was=$1
    mkdir -p "$runs"
    exec 9< "$runs"
    flock -w 60 9 || fail "another activation holds the host's lock"
    if [ "$(boot_id)" != "$was" ]; then echo rebooted; exit 0; fi  # too late: its one-shot entry is used
    kind=$(loader) || fail "no boot loader found"
    clear_oneshot "$kind" >&2 || fail "cannot clear the one-shot boot entry ($kind)"
    rm -f "$record"
    sync
    echo "cancelled $(running)"
    ;;
  fall-back)
    mkdir -p "$runs"
    exec 9< "$runs"
    flock -w 60 9 || fail "another activation holds the host's lock"
    good=$(readlink -f "$profile")
    rm -f "$record"
    kind=$(loader) && clear_oneshot "$kind"  # a one-shot entry not used yet goes too
    if [ "$kind" = grub ]; then grub-set-default 0; fi
    cur=$(running)
    if [ "$cur" = "$good" ]; then
      echo "on $good"
    else
      sync
      echo "boot-id $(boot_id)"
      echo "rebooting $good"
      reboot_now || echo "refused ${cur:--} $refusal"
    fi
    ;;
  grub-entry)
    grub_entry "$1" "$2"
    ;;
  *)
    echo "reboot.sh: unknown call $what" >&2
    exit 2
    ;;
esac
