#!/bin/sh
# What nix-hive runs as root on a host for keys (hive/keys.py), from a file it wrote under
# /run/nix-hive/ID/ (a fixed argv shape that a sudoers rule allows, never `sh -c` as root):
#
#   keys.sh hashes DEST...              print `SHA-256  DEST` of each destination that exists
#                                       (and that an upload would write)
#   keys.sh upload DEST USER GROUP MODE install one key from standard input: a line
#                                       "SHA-256 LENGTH", then the content (exactly: read(1)
#                                       byte by byte takes the line alone from a pipe)
#
# Exit 64/65: a user or group the host lacks; 66: the content arrived altered (it is then not
# installed); 67: a destination nix-hive will not write through, one line saying why.
#
# Nothing is written through a link, nor where another user could put one: every directory
# from / down to the key's must be a directory (the missing ones are made, root's, 0755), not
# a symbolic link, be root's, and be writable by root alone or sticky (as /tmp: others can
# neither rename nor remove root's entries there). They are checked from the top down, so
# none can change after its check (only root may change its parent). The destination itself
# must not be a link or a directory. The key is made in its checked directory, given its
# owner and mode, filled, and renamed onto the destination's name: `mv -T` is rename(2), which
# replaces a name and never follows it.
case $0 in /run/nix-hive/*/keys.sh) rm -f "$0"; rmdir "${0%/*}" 2>/dev/null || : ;; esac
set -eu

refuse() {  # WHY: one line, exit 67
  echo "$1: refused" >&2
  exit 67
}

safe_dir() {  # DIR: an existing directory that only root may change
  if [ -L "$1" ]; then refuse "$1 is a symbolic link"; fi
  if [ ! -d "$1" ]; then refuse "$1 is not a directory"; fi
  # shellcheck disable=SC2046 # three words: uid, user name, octal mode
  set -- "$1" $(stat -c '%u %U %a' -- "$1")
  if [ "$2" -ne 0 ]; then refuse "$1 is owned by $3, not root"; fi
  if [ $((0$4 & 022)) -ne 0 ] && [ $((0$4 & 01000)) -eq 0 ]; then
    refuse "$1 is writable by others than root and not sticky (mode $4)"
  fi
}

safe_path() {  # DIR [make]: safe_dir of / and of every directory down to DIR; status 1 if one
  # is missing, unless `make` makes it (a sticky parent's other users may make it first: it is
  # then checked as any other)
  safe_dir /
  path=''
  rest=${1#/}
  while [ -n "$rest" ]; do
    path=$path/${rest%%/*}
    case $rest in */*) rest=${rest#*/} ;; *) rest='' ;; esac
    if [ ! -e "$path" ] && [ ! -L "$path" ]; then
      [ "${2:-}" = make ] || return 1
      mkdir -m 0755 -- "$path" 2>/dev/null || [ -e "$path" ] || [ -L "$path" ] || mkdir -m 0755 -- "$path"
    fi
    safe_dir "$path"
  done
}

what=$1
shift
if [ "$what" = hashes ]; then
  for f in "$@"; do
    if (safe_path "${f%/*}" && [ -f "$f" ] && [ ! -L "$f" ]) 2>/dev/null; then
      sha256sum -- "$f" 2>/dev/null || :
    fi
  done
  exit 0
fi
[ "$what" = upload ] || { echo "keys.sh: unknown call $what" >&2; exit 2; }
dest=$1
user=$2
group=$3
mode=$4
if ! id -u "$user" > /dev/null 2>&1; then echo "no user $user" >&2; exit 64; fi
if ! getent group "$group" > /dev/null 2>&1; then echo "no group $group" >&2; exit 65; fi
dir=${dest%/*}
safe_path "$dir" make
if [ -L "$dest" ]; then refuse "$dest is a symbolic link"; fi
if [ -e "$dest" ] && [ ! -f "$dest" ]; then refuse "$dest is not a regular file"; fi
tmp=$(mktemp "$dir/.nix-hive-key.XXXXXX")
trap 'rm -f "$tmp"' EXIT
chown "$user:$group" "$tmp"
chmod "$mode" "$tmp"
if ! read -r want size; then echo "nothing arrived: not installed" >&2; exit 66; fi
cat > "$tmp"
got=$(sha256sum < "$tmp")
got=${got%% *}
if [ "$got" != "$want" ]; then
  echo "the content arrived altered ($(($(wc -c < "$tmp"))) of $size bytes, another SHA-256): not installed" >&2
  exit 66
fi
mv -fT "$tmp" "$dest"
trap - EXIT
