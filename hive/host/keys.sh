#!/bin/sh
# What nix-hive runs as root on a host for keys (hive/keys.py), from a file it wrote under
# /run/nix-hive/ID/ (a fixed argv shape that a sudoers rule allows, never `sh -c` as root):
#
#   keys.sh hashes DEST...   print `SHA-256  DEST` of each destination that exists (and that an
#                            upload would write)
#   keys.sh upload COUNT     install COUNT keys from standard input: COUNT lines
#                            "SHA-256 LENGTH MODE USER GROUP DEST" (DEST: the rest of the line,
#                            as it is: spaces and all; no control character), then the COUNT
#                            contents back to back, each exactly LENGTH bytes (`read` takes a
#                            line alone from a pipe, byte by byte; GNU `head -c N` reads no
#                            more than N bytes)
#
# A key that cannot be installed leaves the others be: each is installed or not on its own,
# and each that is not is one line on standard output, `N CODE WHY` (N: its place, from 1;
# CODE 64/65: a user or group the host lacks; 66: the content arrived altered, it is then not
# installed; 67: a destination nix-hive will not write through; 1: its rename failed). Exit 0:
# every key installed; 68: some were not (those lines); anything else: the call failed as a
# whole (2: nix-hive's mistake; 66: the key lines arrived cut short, nothing installed).
#
# Nothing is written through a link, nor where another user could put one: every directory
# from / down to the key's must be a directory (the missing ones are made, root's, 0755), not
# a symbolic link, be root's, and be writable by root alone or sticky (as /tmp: others can
# neither rename nor remove root's entries there). They are checked from the top down, so
# none can change after its check (only root may change its parent), once per directory and
# call. The destination itself must not be a link or a directory. The keys of a directory are
# made in a private directory of root's in it (mktemp -d: mode 0700), each given its owner and
# mode, then filled, checked against its SHA-256, and renamed onto the destination's name
# (`mv -t DIR`: rename(2), which replaces a name and never follows it), the keys of one
# directory by one `mv`. The private directory goes when the call ends, whatever happened.
case $0 in /run/nix-hive/*/keys.sh) rm -f "$0"; rmdir "${0%/*}" 2>/dev/null || : ;; esac
set -eu

refuse() {  # WHY: the reason, in $why; status 67
  why="$1: refused"
  return 67
}

safe_dir() {  # DIR: an existing directory that only root may change
  if [ -L "$1" ]; then refuse "$1 is a symbolic link"; return; fi
  if [ ! -d "$1" ]; then refuse "$1 is not a directory"; return; fi
  # shellcheck disable=SC2046 # three words: uid, user name, octal mode
  set -- "$1" $(stat -c '%u %U %a' -- "$1")
  if [ $# -ne 4 ]; then refuse "$1 cannot be examined"; return; fi
  if [ "$2" -ne 0 ]; then refuse "$1 is owned by $3, not root"; return; fi
  if [ $((0$4 & 022)) -ne 0 ] && [ $((0$4 & 01000)) -eq 0 ]; then
    refuse "$1 is writable by others than root and not sticky (mode $4)"
  fi
}

safe_path() {  # DIR [make]: safe_dir of / and of every directory down to DIR; status 1 if one
  # is missing, unless `make` makes it (a sticky parent's other users may make it first: it is
  # then checked as any other)
  safe_dir / || return
  path=''
  rest=${1#/}
  while [ -n "$rest" ]; do
    path=$path/${rest%%/*}
    case $rest in */*) rest=${rest#*/} ;; *) rest='' ;; esac
    if [ ! -e "$path" ] && [ ! -L "$path" ]; then
      [ "${2:-}" = make ] || return 1
      mkdir -m 0755 -- "$path" 2>/dev/null || [ -e "$path" ] || [ -L "$path" ] || mkdir -m 0755 -- "$path" || :
    fi
    safe_dir "$path" || return
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
if [ "$what" != upload ] || [ $# -ne 1 ]; then echo "keys.sh: unknown call $what" >&2; exit 2; fi
count=$1
case $count in '' | *[!0-9]*) echo "keys.sh: upload COUNT, not $count" >&2; exit 2 ;; esac
nl='
'
tab=$(printf '\t')
umask 077
failed=0

fail() {  # N CODE WHY: key N is not installed, and says why
  eval "k_code_$1=\$2"
  printf '%s %s %s\n' "$1" "$2" "$3"
  failed=1
}

key() {  # N: key N's fields in want size mode owner dest dir base code stage (its directory's)
  eval "want=\$k_want_$1 size=\$k_size_$1 mode=\$k_mode_$1 owner=\$k_owner_$1 dest=\$k_dest_$1" \
    "code=\$k_code_$1 d=\$k_dir_$1"
  dir=${dest%/*}
  base=${dest##*/}
  eval "stage=\${stage_$d:-}"
}

staged() {  # D [OWNER|MODE VALUE]: NUL-terminated, the base names of the keys of directory D
  # still to install (only those of that owner or mode), in their order
  n=0
  while [ "$n" -lt "$count" ]; do
    n=$((n + 1))
    key "$n"
    if [ -n "$code" ] || [ "$d" != "$1" ]; then continue; fi
    case ${2:-} in owner) [ "$owner" = "$3" ] || continue ;; mode) [ "$mode" = "$3" ] || continue ;; esac
    printf '%s\0' "$base"
  done
}

each() {  # owner|mode VALUE CMD...: CMD the files of the keys of that owner or mode (in their
  # directory's private one: base names only)
  field=$1 value=$2
  shift 2
  n=0
  while [ "$n" -lt "$ndirs" ]; do
    n=$((n + 1))
    eval "stage=\$stage_$n"
    (cd "$stage" && staged "$n" "$field" "$value" | xargs -0r "$@")
  done
}

# 1. The key lines: each key checked (its user, group, directories, destination) before any
# content is read.
users=' ' groups=' ' dirs=$nl owners=$nl modes=$nl ndirs=0
i=0
while [ "$i" -lt "$count" ]; do
  i=$((i + 1))
  if ! IFS= read -r line; then
    echo "the key list arrived cut short ($((i - 1)) of $count lines): nothing installed" >&2
    exit 66
  fi
  want=${line%% *} line=${line#* }
  size=${line%% *} line=${line#* }
  mode=${line%% *} line=${line#* }
  user=${line%% *} line=${line#* }
  group=${line%% *} dest=${line#* }
  case $want in *[!0-9a-f]* | '') want=bad ;; esac
  case $size in *[!0-9]* | '') want=bad ;; esac
  case $mode in *[!0-7]* | '') want=bad ;; esac
  case $dest in /*"$tab"*) dest=bad ;; /*) ;; *) dest=bad ;; esac
  if [ ${#want} -ne 64 ] || [ "$dest" = bad ]; then echo "keys.sh: key line $i is not one" >&2; exit 2; fi
  eval "k_want_$i=\$want k_size_$i=\$size k_mode_$i=\$mode k_owner_$i=\$user:\$group k_dest_$i=\$dest k_code_$i= k_dir_$i="
  case $users in *" $user "*) ;; *)
    if ! id -u "$user" > /dev/null 2>&1; then fail "$i" 64 "no user $user"; continue; fi
    users="$users$user "
  esac
  case $groups in *" $group "*) ;; *)
    if ! getent group "$group" > /dev/null 2>&1; then fail "$i" 65 "no group $group"; continue; fi
    groups="$groups$group "
  esac
  dir=${dest%/*}
  case $dirs in *"$nl$dir$tab"*) ;; *)
    if ! safe_path "$dir" make; then fail "$i" 67 "$why"; continue; fi
    ndirs=$((ndirs + 1))
    dirs="$dirs$dir$tab$ndirs$nl"
  esac
  d=${dirs#*"$nl$dir$tab"}
  eval "k_dir_$i=\${d%%\"\$nl\"*}"
  if [ -L "$dest" ]; then fail "$i" 67 "$dest is a symbolic link: refused"; continue; fi
  if [ -e "$dest" ] && [ ! -f "$dest" ]; then fail "$i" 67 "$dest is not a regular file: refused"; continue; fi
  case $owners in *"$nl$user:$group$nl"*) ;; *) owners="$owners$user:$group$nl" ;; esac
  case $modes in *"$nl$mode$nl"*) ;; *) modes="$modes$mode$nl" ;; esac
done

# 2. Each directory's private one, each key's file in it, given its owner and mode (root's,
# 0600 as made: umask 077), all before any content.
cleanup() {
  n=0
  while [ "$n" -lt "$ndirs" ]; do
    n=$((n + 1))
    eval "stage=\${stage_$n:-}"
    if [ -n "$stage" ]; then rm -rf -- "$stage"; fi
  done
}
trap cleanup EXIT
n=0
while [ "$n" -lt "$ndirs" ]; do
  n=$((n + 1))
  dir=${dirs%%"$tab$n$nl"*}
  dir=${dir##*"$nl"}
  eval "stage_$n=\$(mktemp -d \"\$dir/.nix-hive-keys.XXXXXX\")"
done
i=0
while [ "$i" -lt "$count" ]; do
  i=$((i + 1))
  key "$i"
  if [ -z "$code" ]; then : > "$stage/$base"; fi
done
set -f
IFS=$nl
for owner in $owners; do
  if [ "$owner" != root:root ]; then each owner "$owner" chown -- "$owner"; fi
done
for mode in $modes; do
  case $mode in 600 | 0600) ;; *) each mode "$mode" chmod -- "$mode" ;; esac
done
IFS=' '

# 3. The contents, in order (a refused key's is read and dropped).
i=0
while [ "$i" -lt "$count" ]; do
  i=$((i + 1))
  key "$i"
  if [ -z "$code" ]; then head -c "$size" > "$stage/$base"; else head -c "$size" > /dev/null; fi
done

# 4. Each file's SHA-256 against the one its line gave (sha256sum prints a line per file, in
# order; one with a backslash in its name starts with a backslash).
n=0
while [ "$n" -lt "$ndirs" ]; do
  n=$((n + 1))
  eval "stage=\$stage_$n"
  IFS=$nl
  # shellcheck disable=SC2046 # one word per line
  set -- $(cd "$stage" && staged "$n" | xargs -0r sha256sum --)
  IFS=' '
  i=0
  while [ "$i" -lt "$count" ]; do
    i=$((i + 1))
    key "$i"
    if [ -n "$code" ] || [ "$d" != "$n" ]; then continue; fi
    got=${1:-}
    got=${got#\\}
    [ $# -eq 0 ] || shift
    if [ "${got%% *}" != "$want" ]; then
      fail "$i" 66 "the content arrived altered ($(($(wc -c < "$stage/$base"))) of $size bytes, another SHA-256): not installed"
    fi
  done
done

# 5. The renames: one mv per directory; a file still in its private directory was not renamed.
n=0
while [ "$n" -lt "$ndirs" ]; do
  n=$((n + 1))
  eval "stage=\$stage_$n"
  dir=${dirs%%"$tab$n$nl"*}
  dir=${dir##*"$nl"}
  (cd "$stage" && staged "$n" | xargs -0r mv -f -t "$dir/" --) || :
  i=0
  while [ "$i" -lt "$count" ]; do
    i=$((i + 1))
    key "$i"
    if [ -n "$code" ] || [ "$d" != "$n" ]; then continue; fi
    if [ -e "$stage/$base" ] || [ -L "$stage/$base" ]; then fail "$i" 1 "$dest: its rename failed: not installed"; fi
  done
done
if [ "$failed" -ne 0 ]; then exit 68; fi
