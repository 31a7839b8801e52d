#!/bin/sh
# `nix-hive rollback` on one host (hive/fleet.py): back to the generation before the current one
# of the system profile. It runs as the ssh user, behind hive/host/elevate.sh; every value is an
# argument:
#
#   rollback.sh PROFILE SETS_PROFILE GOAL ID LOCKWAIT
#
# PROFILE       the system profile (/nix/var/nix/profiles/system)
# SETS_PROFILE  1: the profile moves back too (goals switch and boot); 0: it stays (test, dry-activate)
# GOAL          switch | boot | test | dry-activate
# ID            a call's ID: /run/nix-hive/ID is made (as root) when /run/nix-hive is not there yet
# LOCKWAIT      seconds to wait for the host lock (another run's activation, reboot or rollback)
#
# It holds the host lock (flock on the directory /run/nix-hive, as activate.sh and reboot.sh) from
# before it reads the profile to the end of its switch: a rollback never runs inside another
# run's activation, whose confirmation would then confirm a host that runs something else.
#
# Only two commands run as root, through `as_root`, each of a fixed argv shape that a sudoers
# rule allows (hive/elevate.py, ROLLBACK_RULES), never a root shell:
#
#   nix-env -p PROFILE --switch-generation N
#   /nix/store/…/bin/switch-to-configuration GOAL
#
# The previous generation's system is checked before the profile moves (not_runnable): a profile
# on a system that is gone, or that cannot switch, would boot what the host does not run. When
# its switch fails, the profile goes back to the generation it was on.
#
# Prints `path=SYSTEM` before the switch. Exit 3: nothing to roll back to; 4: the previous
# generation is no system this host can run (the profile did not move); 5: its switch failed;
# 6: another run held the host lock for LOCKWAIT seconds (nothing done); each with one line on
# standard error that says why. Any other: nix-env failed, or a refusal of elevate.sh (90..94).
set -u

# not_runnable (hive/host/runnable.sh): in the text nix-hive sends, put there by hive/resources.py;
# read from beside this file where it runs as a file of the package
# shellcheck disable=SC1091
. "$(dirname "$0")/runnable.sh"

profile=$1
sets_profile=$2
goal=$3
id=$4
lockwait=$5

runs=/run/nix-hive
if [ ! -d "$runs" ]; then as_root mkdir -p -m 755 "$runs" "$runs/$id" || exit 1; fi
exec 9< "$runs"
if ! flock -w "$lockwait" 9; then
  echo "another activation is running on it ($(cat "$runs/owner" 2> /dev/null || echo unknown)); waited $lockwait s" >&2
  exit 6
fi

cur=$(readlink "$profile") || { echo "no system profile $profile" >&2; exit 3; }
cur=${cur#system-}
cur=${cur%-link}
n=
for link in "$profile"-*-link; do
  g=${link#"$profile"-}
  g=${g%-link}
  case $g in '' | *[!0-9]*) continue ;; esac
  if [ "$g" -lt "$cur" ] && { [ -z "$n" ] || [ "$g" -gt "$n" ]; }; then n=$g; fi
done
if [ -z "$n" ]; then echo "no previous generation of $profile" >&2; exit 3; fi
path=$(readlink -f "$profile-$n-link")
why=$(not_runnable "$path")
if [ -n "$why" ]; then echo "generation $n ($path) is not a runnable system: $why" >&2; exit 4; fi
if [ "$sets_profile" = 1 ]; then as_root nix-env -p "$profile" --switch-generation "$n" 9<&- || exit 1; fi
echo "path=$path"
as_root "$path/bin/switch-to-configuration" "$goal" 9<&-
rc=$?
if [ "$rc" -ne 0 ]; then
  if [ "$sets_profile" = 1 ] && as_root nix-env -p "$profile" --switch-generation "$cur" 9<&-; then
    echo "generation $n's switch-to-configuration $goal failed (exit $rc): the profile is back on generation $cur" >&2
  else
    echo "generation $n's switch-to-configuration $goal failed (exit $rc)" >&2
  fi
  exit 5
fi
