#!/bin/sh
# What nix-hive runs on a host to start an activation (hive/host/activate.sh) and follow it, as
# the ssh user (root, or a user allowed the `as_root` commands by sudo or run0). hive/activate.py calls:
#
#   control.sh start ID SECONDS ARGS...  activate.sh's text on stdin: write it to /run/nix-hive/ID/
#                                        and start it detached (ARGS: activate.sh's), then follow it
#                                        until it waits for its confirmation or ends
#   control.sh confirm DIR SECONDS       wait for a line on stdin: `confirm` confirms the activation
#                                        of DIR (end of input: nothing), then follow it to its end
#   control.sh abort DIR SECONDS WHY     have the activation of DIR roll back (WHY: one word), then
#                                        follow it to its end
#   control.sh follow DIR SECONDS        follow it to its end
#
# Following prints `state S` each time DIR/state changes, and every 2 s anyway: a host that
# stays silent longer than nix-hive's bound is taken for one that stopped answering. It lasts
# at most SECONDS. One ssh call follows an activation, where asking again and again would
# start a process on the deployer and a shell on the host for each look.
#
# `start` runs activate.sh in a transient systemd unit (nix-hive-activate-ID) where the host
# runs systemd, else under setsid: either way it outlives this connection. systemd expands `$`
# in a unit's command line: the script is a file, and nix-hive passes only arguments that have
# no `$`, `%` or white space (hive/activate.py checks).
#
# Commands that need root go through `as_root` (and $root_prefix): hive/host/elevate.sh, which
# nix-hive puts before this text with the host's elevation (sudo -n, sudo with the password
# as the first line of standard input, run0, or none as root).
set -eu

follow() {  # DIR SECONDS STOP: print the state as it changes until it is an end state (or STOP)
  last=-
  i=0
  while [ "$i" -le $(($2 * 10)) ]; do
    s=
    if [ -r "$1/state" ]; then IFS= read -r s < "$1/state" || true; fi
    if [ "$s" != "$last" ] || [ $((i % 20)) -eq 0 ]; then
      echo "state $s"
      last=$s
    fi
    case $s in
      "$3" | done | confirmed | rolled-back* | timed-out | failed-* | busy* | abandoned) return 0 ;;
    esac
    sleep 0.1
    i=$((i + 1))
  done
}

what=$1
shift
case $what in
  start)
    id=$1
    seconds=$2
    shift 2
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
    else
      # a simple command, not as_root: a function's redirections keep copies of this connection's
      # descriptors open in the background shell, and ssh would wait for it to end. With a
      # password, as_root above validated it: this sudo -n uses the credential it cached.
      # shellcheck disable=SC2154,SC2086 # root_prefix (elevate.sh): words on purpose
      $root_prefix setsid sh "$d/activate.sh" "$@" > /dev/null 2>&1 < /dev/null &
    fi
    follow "$d" "$seconds" waiting
    ;;
  confirm)
    IFS= read -r go || go=
    if [ "$go" = confirm ]; then
      as_root touch "$1/confirm"
      follow "$1" "$2" -
    fi
    ;;
  abort)
    # not `echo | as_root …`: a pipeline's sudo may not be this shell's child, and sudo keeps
    # the credential of --ask-sudo-password for this shell (elevate.sh)
    as_root tee "$1/abort" > /dev/null << WHY
$3
WHY
    follow "$1" "$2" -
    ;;
  follow)
    follow "$1" "$2" -
    ;;
  *)
    echo "control.sh: unknown call $what" >&2
    exit 2
    ;;
esac
