#!/bin/sh
# inhibited OLD NEW: the switch inhibitors that keep the host from switching from system OLD to
# system NEW, one line each, "NAME : OLD-VALUE -> NEW-VALUE" (nothing: none). NixOS (since
# nixpkgs #473282, #477800) writes a system's `system.switch.inhibitors` as a JSON object of
# strings to $out/switch-inhibitors, and its pre-switch check refuses `switch` and `test` when
# an inhibitor present in both systems has another value; `boot` is never checked. A system
# without the file has none. hive/host/activate.sh refuses such a switch before anything moves
# (unless told to pass NIXOS_NO_CHECK=1 on), and reboot.sh's `needs` counts them as needing a
# reboot (--reboot=auto). activate.sh and reboot.sh source this file, and nix-hive puts its
# text in theirs where they are sent (hive/resources.py: host_script).
#
# The file is builtins.toJSON's: one line, an object of strings (keys sorted, `\"` and `\\`
# escaped); awk reads it as such, whichever awk the host has (gawk on NixOS).
inhibited() {
  [ -f "$1/switch-inhibitors" ] && [ -f "$2/switch-inhibitors" ] || return 0
  cmp -s "$1/switch-inhibitors" "$2/switch-inhibitors" && return 0
  awk '
    function pairs(text, into,   i, c, s, key, n, inside, escaped) {  # into[KEY] = VALUE
      n = 0; inside = 0; escaped = 0; s = ""
      for (i = 1; i <= length(text); i++) {
        c = substr(text, i, 1)
        if (!inside) { if (c == "\"") { inside = 1; s = "" }; continue }
        if (escaped) { s = s c; escaped = 0; continue }
        if (c == "\\") { escaped = 1; continue }
        if (c != "\"") { s = s c; continue }
        inside = 0; n++
        if (n % 2 == 1) key = s; else into[key] = s
      }
    }
    { text[FILENAME] = text[FILENAME] $0 }
    END {
      pairs(text[ARGV[1]], old); pairs(text[ARGV[2]], new)
      for (k in old) if ((k in new) && old[k] != new[k]) print k " : " old[k] " -> " new[k]
    }' "$1/switch-inhibitors" "$2/switch-inhibitors" | sort
}
