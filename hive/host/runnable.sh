#!/bin/sh
# not_runnable SYSTEM: why the system profile must not point at SYSTEM, in one line (nothing:
# this host can run it): it is gone from the store, not valid there, or has no executable
# bin/switch-to-configuration. Every host script that moves the system profile checks its
# target with it first (activate.sh, reboot.sh, rollback.sh): they source this file, and
# nix-hive puts its text in theirs where they are sent (hive/resources.py: host_script).
not_runnable() {
  if [ ! -e "$1" ]; then echo "$1 is no longer in the host's store"; return 0; fi
  invalid=$(nix-store --check-validity --print-invalid "$1" 2> /dev/null) || {
    echo "$1 cannot be checked (nix-store --check-validity failed)"
    return 0
  }
  if [ -n "$invalid" ]; then echo "$1 is not valid in the host's store"
  elif [ ! -x "$1/bin/switch-to-configuration" ]; then echo "$1 has no executable bin/switch-to-configuration"
  fi
}
