#!/bin/sh
# How nix-hive becomes root on a host. This text goes before every script nix-hive runs there
# with commands that need root (hive/elevate.py), followed by one call:
#
#   elevate METHOD      METHOD: sudo, sudo-password, run0 or none (a word of nix-hive's own)
#
# which defines `as_root CMD ARGS...` (and $root_prefix, for a command that must be a simple
# one, as control.sh's detached launch). As root (the ssh user is root), it runs CMD itself.
#
# sudo-password: the first line of standard input is the sudo password; `elevate` reads it
# (a builtin: never in an argv) and leaves the rest of the input to the script. The first
# `as_root` hands it to `sudo -S -v` alone (its input is that line, then its end: sudo tries
# it once, never the script's data, and a wrong password is one failed attempt, no retry
# storm); then every command runs as `sudo -n`, on the credential that validation cached for
# this shell (sudo keys it to the terminal, or without one to this shell's process). The
# password is forgotten as soon as sudo took it, and the credential is dropped (`sudo -k`)
# when the script ends. So a script calls `as_root` as a command of its own shell, never in
# a pipeline or `$(…)`: there sudo's parent may be a subshell, which has no credential.
# Exit 90..94: nix-hive's own refusals (hive/elevate.py words them).
# shellcheck disable=SC2317,SC2034 # as_root and root_prefix serve the script that follows this text
elevate() {
  elevate_how=$1
  elevate_pw=
  if [ "$elevate_how" = sudo-password ] && ! IFS= read -r elevate_pw; then
    echo "nix-hive: no sudo password arrived" >&2
    exit 94
  fi
  root_prefix=
  if [ "$(id -u)" -eq 0 ]; then
    elevate_pw=
    as_root() { "$@"; }
    return 0
  fi
  case $elevate_how in
    none)
      echo "nix-hive: elevate none: the ssh user $(id -un) is not root" >&2
      exit 90
      ;;
    run0)
      if ! command -v run0 > /dev/null 2>&1; then
        echo "nix-hive: elevate run0: this host has no run0 (systemd 256 or later)" >&2
        exit 91
      fi
      root_prefix="run0 --no-ask-password --"
      as_root() { run0 --no-ask-password -- "$@"; }
      ;;
    sudo)
      root_prefix="sudo -n --"
      as_root() { sudo -n -- "$@"; }
      ;;
    sudo-password)
      root_prefix="sudo -n --"
      elevate_done=
      trap 'sudo -k 2> /dev/null || :' EXIT
      as_root() {
        if [ -z "$elevate_done" ]; then
          if ! printf '%s\n' "$elevate_pw" | sudo -S -p '' -v; then
            elevate_pw=
            echo "nix-hive: sudo -v failed" >&2
            exit 92
          fi
          elevate_pw=
          elevate_done=1
          if ! sudo -n -v 2> /dev/null; then
            echo "nix-hive: sudo keeps no credential between commands here (timestamp_timeout 0?)" >&2
            exit 93
          fi
        fi
        sudo -n -- "$@"
      }
      ;;
    *)
      echo "nix-hive: unknown elevation $elevate_how" >&2
      exit 2
      ;;
  esac
}
