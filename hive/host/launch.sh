#!/bin/sh
# Starts hive/host/activate.sh on the host, detached from this ssh connection, as root:
#
#   launch.sh ID ARGS...     (activate.sh's text on standard input; ARGS: activate.sh's)
#
# It writes activate.sh to /run/nix-hive/ID/ and runs it there: in a transient systemd unit
# (nix-hive-activate-ID) where the host runs systemd, else under setsid. systemd expands `$`
# in a unit's command line: the script is a file, and nix-hive passes only arguments that
# have no `$`, `%` or white space (hive/activate.py checks).
set -eu
id=$1
shift
if [ "$(id -u)" -eq 0 ]; then
  as_root() { "$@"; }
else
  as_root() { sudo -n -- "$@"; }
fi
d=/run/nix-hive/$id
as_root mkdir -p -m 755 /run/nix-hive "$d"
as_root tee "$d/activate.sh" > /dev/null
if [ -d /run/systemd/system ] && command -v systemd-run > /dev/null 2>&1; then
  # as nixos-rebuild-ng runs switch-to-configuration, but detached (no --wait): the host
  # finishes (and rolls back) whatever happens to this connection
  if [ -n "${LOCALE_ARCHIVE:-}" ]; then
    as_root systemd-run --quiet --collect --no-ask-password --service-type=exec \
      --setenv=LOCALE_ARCHIVE="$LOCALE_ARCHIVE" --unit="nix-hive-activate-$id" sh "$d/activate.sh" "$@"
  else
    as_root systemd-run --quiet --collect --no-ask-password --service-type=exec \
      --unit="nix-hive-activate-$id" sh "$d/activate.sh" "$@"
  fi
elif [ "$(id -u)" -eq 0 ]; then
  # a simple command, not as_root: a function's redirections keep copies of this connection's
  # descriptors open in the background shell, and ssh would wait for it to end
  setsid sh "$d/activate.sh" "$@" > /dev/null 2>&1 < /dev/null &
else
  sudo -n -- setsid sh "$d/activate.sh" "$@" > /dev/null 2>&1 < /dev/null &
fi
