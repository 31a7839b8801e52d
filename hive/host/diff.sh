#!/bin/sh
# What `nix-hive diff` asks a host (hive/changes.py), one call each. It only reads, as the ssh
# user; every value is an argument or comes on standard input, none is put in this text.
#
#   diff.sh facts           the paths of the system the host is to run come on standard input,
#                           one a line: prints `current PATH` (what /run/current-system links
#                           to; `current ` when there is none: never activated), a `missing PATH`
#                           line for each of those paths the host's store lacks, then `end`
#   diff.sh closure PATH    every path of PATH's closure in the host's store and its NAR size:
#                           a `path P` line each, then a `size N` line each in the same order,
#                           then `end`
#
# `end` comes last, and only when everything before it was said: an answer without it was
# cut. Errors: `error WHY` on stdout, exit 3. nix-store's queries are the same on every Nix
# from 2.8 on: `--check-validity --print-invalid` prints the paths not valid and exits 0,
# `--query --requisites` the closure, `--query --size` a NAR size a line, argument by argument.
set -u

fail() {
  echo "error $*"
  exit 3
}

prefixed() {  # each line of standard input, after WORD and a space
  while IFS= read -r line; do
    [ -z "$line" ] || printf '%s %s\n' "$1" "$line"
  done
}

facts() {
  printf 'current %s\n' "$(readlink /run/current-system 2> /dev/null)"
  missing=$(xargs nix-store --check-validity --print-invalid) || fail "nix-store --check-validity failed"
  printf '%s\n' "$missing" | prefixed missing
  echo end
}

closure() {
  nix-store --check-validity "$1" 2> /dev/null || fail "its store does not hold it"
  paths=$(nix-store --query --requisites "$1") || fail "nix-store --query --requisites failed"
  sizes=$(printf '%s\n' "$paths" | xargs nix-store --query --size) || fail "nix-store --query --size failed"
  printf '%s\n' "$paths" | prefixed path
  printf '%s\n' "$sizes" | prefixed size
  echo end
}

case "${1:-}" in
  facts) facts ;;
  closure) [ $# -eq 2 ] || fail "usage: diff.sh closure PATH"; closure "$2" ;;
  *) fail "usage: diff.sh facts | closure PATH" ;;
esac
