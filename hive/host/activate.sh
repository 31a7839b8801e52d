#!/bin/sh
# nix-hive's activation of one system on one host, as root, detached from the ssh connection
# that started it (launch.sh: a transient systemd unit, or setsid). Every value is an argument:
#
#   activate.sh DIR PROFILE NEW GOAL TIMEOUT ROLLBACK CONFIRM LOCKWAIT WHO NOCHECK
#
# DIR      this activation's directory (/run/nix-hive/ID): state, log, pid, confirm, abort
# PROFILE  the system profile (/nix/var/nix/profiles/system)
# NEW      the system to activate (a store path)
# GOAL     switch | boot | test | dry-activate
# TIMEOUT  seconds switch-to-configuration may take (then it is killed: timed-out)
# ROLLBACK 1: put the host back on the system it ran before when the activation fails
# CONFIRM  seconds to wait for DIR/confirm (magic rollback; 0: none). Without it (or on
#          DIR/abort) the host rolls back by itself.
# LOCKWAIT seconds to wait for another activation of this host to end (the host lock)
# WHO      who started it (user@deployer), for the lock's owner line
# NOCHECK  1: switch even when a switch inhibitor changed (NixOS's NIXOS_NO_CHECK=1); 0: such a
#          switch or test is refused before anything moves (state failed-inhibited LINES)
#
# One change of the host at a time: the host lock (flock on the directory /run/nix-hive itself,
# hive/activate.py says who takes it) is held from before anything is read that the change
# depends on (the running system, the profile) to the end of the confirmation window and of
# any rollback, so no rollback ever undoes a switch it did not make. /run/nix-hive/owner says
# who holds it. Being the directory, the lock is no file that a cleanup could remove.
#
# DIR/state says where it is: locked (waiting for the lock), activating, waiting, then one of
# done, confirmed, rolled-back WHY, timed-out, failed-N, failed-profile, failed-rollback WHY,
# failed-no-previous WHY, failed-gone WHY REASON, failed-target REASON, failed-inhibited LINES
# (inhibited's lines, joined by "; "), busy OWNER
# (hive/activate.py reads it; REASON: not_runnable's line, which starts with the system).
# Children run without the lock's descriptor (9>&-): a daemon an activation starts must not
# hold the host's lock for ever.
set -u
umask 022
# a transient systemd unit starts with systemd's default PATH: NixOS keeps its tools elsewhere
PATH="/run/current-system/sw/bin:/nix/var/nix/profiles/default/bin:$PATH"
export PATH
# as nixos-rebuild: switch-to-configuration installs the boot loader only as it needs to
NIXOS_INSTALL_BOOTLOADER=0
export NIXOS_INSTALL_BOOTLOADER

d=$1; profile=$2; new=$3; goal=$4; limit=$5; rollback=$6; confirm=$7; lockwait=$8; who=$9; nocheck=${10:-0}
runs=$(dirname "$d")
sets_profile=0
case $goal in switch|boot) sets_profile=1 ;; esac

say() { echo "$1" > "$d/state.tmp" && mv -f "$d/state.tmp" "$d/state"; }
# not_runnable (hive/host/runnable.sh): in the text nix-hive sends, put there by hive/resources.py;
# read from beside this file where it runs as a file of the package
# shellcheck disable=SC1091
. "$(dirname "$0")/runnable.sh"
# inhibited (hive/host/inhibitors.sh), the same way
# shellcheck disable=SC1091
. "$(dirname "$0")/inhibitors.sh"

echo $$ > "$d/pid"

say locked
exec 9< "$runs"
if ! flock -w "$lockwait" 9; then
  say "busy $(cat "$runs/owner" 2>/dev/null || echo unknown)"
  exit 1
fi
echo "${d##*/} started by $who at $(date -u +%Y-%m-%dT%H:%M:%SZ)" > "$runs/owner"
# what earlier calls left, a day old, under the lock (none of them is under way): never this
# activation's directory, nor a reboot's marker (reboot.sh: it goes with the next boot)
find "$runs" -mindepth 1 -maxdepth 1 -mtime +1 ! -name "${d##*/}" ! -name 'reboot-*' ! -name owner \
  -exec rm -rf {} + 2>/dev/null 9<&-
# an activation that still says it waits for its confirmation while the lock was free died
# with its process (a host killed the unit): it will never confirm nor roll back
for o in "$runs"/*/; do
  if [ "${o%/}" != "$d" ] && [ "$(cat "$o/state" 2>/dev/null)" = waiting ]; then
    echo abandoned > "$o/state"
  fi
done
prev=$(readlink -f /run/current-system 2>/dev/null || true)
gen=$(readlink "$profile" 2>/dev/null || true)

back_to() {  # WHY: switch to the system the host ran before, then exit
  say "rolling-back $1"
  if [ "$sets_profile" = 1 ]; then
    n=${gen#system-}
    n=${n%-link}
    if [ -z "$gen" ] || [ "$n" = "$gen" ]; then say "failed-no-previous $1"; exit 1; fi
    back=$(readlink -f "$(dirname "$profile")/$gen")
  else
    if [ -z "$prev" ]; then say "failed-no-previous $1"; exit 1; fi
    back=$prev
  fi
  # the target first: a profile pointing at a system that is gone, or that cannot switch,
  # would boot what the host does not run
  gone=$(not_runnable "$back" 9>&-)
  if [ -n "$gone" ]; then
    say "failed-gone $1 $gone"
    exit 1
  fi
  if [ "$sets_profile" = 1 ]; then
    failed=$(readlink "$profile")
    nix-env -p "$profile" --switch-generation "$n" >> "$d/log" 2>&1 9>&- || { say "failed-rollback $1"; exit 1; }
  fi
  if ! timeout -k 10 "$limit" "$back/bin/switch-to-configuration" "$goal" >> "$d/log" 2>&1 9>&-; then
    if [ "$sets_profile" = 1 ]; then  # back to the generation the host last switched to
      f=${failed#system-}
      nix-env -p "$profile" --switch-generation "${f%-link}" >> "$d/log" 2>&1 9>&-
    fi
    say "failed-rollback $1"
    exit 1
  fi
  say "rolled-back $1"
  exit 0
}

# the new system too, before the profile moves: the host is left as it is when it cannot run it
gone=$(not_runnable "$new" 9>&-)
if [ -n "$gone" ]; then
  say "failed-target $gone"
  exit 1
fi
# NixOS's pre-switch check of switch inhibitors, before the profile moves (NixOS runs it inside
# switch-to-configuration, after nix-env has moved the profile, and a refusal would then roll
# back): the host is left as it is
case $goal in switch|test)
  blocked=
  if [ -n "$prev" ]; then blocked=$(inhibited "$prev" "$new" 9>&- | awk 'NR > 1 { printf "; " } { printf "%s", $0 }'); fi
  if [ -n "$blocked" ] && [ "$nocheck" = 1 ]; then
    echo "nix-hive: switching although switch inhibitors changed (NIXOS_NO_CHECK=1): $blocked" >> "$d/log"
    NIXOS_NO_CHECK=1
    export NIXOS_NO_CHECK
  elif [ -n "$blocked" ]; then
    say "failed-inhibited $blocked"
    exit 1
  fi ;;
esac
if [ "$sets_profile" = 1 ]; then
  nix-env -p "$profile" --set "$new" >> "$d/log" 2>&1 9>&- || { say "failed-profile"; exit 1; }
fi
say activating
timeout -k 10 "$limit" "$new/bin/switch-to-configuration" "$goal" >> "$d/log" 2>&1 9>&-
rc=$?
why=
if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then why=timed-out; elif [ $rc -ne 0 ]; then why=failed-$rc; fi
if [ -n "$why" ]; then
  if [ "$rollback" = 1 ]; then back_to "$why"; fi
  say "$why"
  exit 1
fi
if [ "$confirm" -gt 0 ]; then
  say waiting
  end=$(( $(date +%s) + confirm ))
  while [ "$(date +%s)" -lt "$end" ]; do
    if [ -e "$d/confirm" ]; then say confirmed; exit 0; fi
    if [ -e "$d/abort" ]; then back_to "$(cat "$d/abort")"; fi
    sleep 0.05
  done
  back_to not-confirmed
fi
say "done"
