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
#
# The work grows as the keys do, no faster (issue 29: 2,000 keys had taken 40 times as long as
# 200): a key costs a few builtins and a file; processes are started per directory (mktemp,
# its checks, sha256sum, awk, find, mv), per user and group (id, getent), per owner (chown),
# per mode (chmod), and for the contents per MiB of small keys (head, od, tr, awk) and per key
# of 16 KiB or more (head), never per small key (but one that fails: its line says how many
# bytes arrived).
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
nl='
'
if [ "$what" = hashes ]; then  # one sha256sum for all, each directory checked once
  safe=$nl unsafe=$nl
  for f in "$@"; do
    dir=${f%/*}
    case $unsafe in *"$nl$dir$nl"*) continue ;; esac
    case $safe in *"$nl$dir$nl"*) ;; *)
      if ! safe_path "$dir" 2> /dev/null; then unsafe="$unsafe$dir$nl"; continue; fi
      safe="$safe$dir$nl"
    esac
    if [ -f "$f" ] && [ ! -L "$f" ]; then printf '%s\0' "$f"; fi
  done | xargs -0r sha256sum -- 2> /dev/null || :
  exit 0
fi
if [ "$what" != upload ] || [ $# -ne 1 ]; then echo "keys.sh: unknown call $what" >&2; exit 2; fi
count=$1
case $count in '' | *[!0-9]*) echo "keys.sh: upload COUNT, not $count" >&2; exit 2 ;; esac
tab=$(printf '\t')
umask 077
failed=0

fail() {  # N CODE WHY: key N is not installed, and says why
  eval "f_$1="
  printf '%s %s %s\n' "$1" "$2" "$3"
  failed=1
}

number() {  # TABLE VALUE: $at, VALUE's number in TABLE (the name of a variable holding lines
  # "VALUE<tab>NUMBER", VALUE without a tab or a newline), added with the next number if new
  table=''
  eval "table=\$$1"
  case $table in
    *"$nl$2$tab"*) at=${table#*"$nl$2$tab"} at=${at%%"$nl"*} ;;
    *) at=${table##*"$tab"} at=$((${at%"$nl"} + 1)); eval "$1=\$table\$2\$tab\$at\$nl" ;;
  esac
}

# The call's lists (names, sizes, SHA-256s: never a content; chown and chmod take files from
# them), in a private directory of root's in /tmp, never in $TMPDIR (which the user nix-hive
# logs in as may set, and own: they could swap the lists), and each key directory's private
# one (stage_N, made when its first key is checked), gone when the call ends, whatever happened.
why='/tmp is missing'
if ! safe_path /tmp; then echo "keys.sh: $why" >&2; exit 1; fi
work=$(mktemp -d /tmp/.nix-hive-keys.XXXXXX)
: > "$work/plan"
ndirs=0
cleanup() {
  rm -rf -- "$work"
  n=0
  while [ "$n" -lt "$ndirs" ]; do
    n=$((n + 1))
    eval "rm -rf -- \"\$stage_$n\""
  done
}
trap cleanup EXIT

# 1. The key lines: each key checked (its user, group, directories, destination) before any
# content is read; each that passes gets its file in its directory's private one (root's,
# 0600 as made: umask 077) and goes into that directory's lists (names.D: its name, NUL-ended;
# wants.D: "N SHA-256 LENGTH"), and its owner's and mode's lists (owner.O, mode.MODE: its
# file), all appended key by key: a key costs the same whatever the number of keys, and no
# process of its own. f_N: key N's file, empty for a key not (or no longer) to install.
# plan: how step 3 reads the contents, in order: "big N LENGTH" for a key of BIG bytes or
# more (read alone), "small N BYTES" for a run of smaller keys from key N on (read together,
# at most RUN bytes; sizes.N: their LENGTHs, a line each).
BIG=16384 RUN=1048576
users=' ' groups=' ' dirs=$nl refused=$nl owners="${nl}root:root${tab}0$nl" run='' bytes=0
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
  case $size in *[!0-9]* | '') want=bad ;; *) size=${size#"${size%%[!0]*}"} size=${size:-0} ;; esac
  case $mode in *[!0-7]* | '') want=bad ;; esac
  case $dest in /*"$tab"*) dest=bad ;; /*) ;; *) dest=bad ;; esac
  if [ ${#want} -ne 64 ] || [ "$dest" = bad ]; then echo "keys.sh: key line $i is not one" >&2; exit 2; fi
  if [ -n "$run" ] && { [ "$size" -ge "$BIG" ] || [ $((bytes + size)) -gt "$RUN" ]; }; then
    echo "small $run $bytes" >> "$work/plan"
    run=''
  fi
  if [ "$size" -ge "$BIG" ]; then
    echo "big $i $size" >> "$work/plan"
  else
    if [ -z "$run" ]; then run=$i bytes=0; fi
    echo "$size" >> "$work/sizes.$run"
    bytes=$((bytes + size))
  fi
  eval "f_$i="
  case $users in *" $user "*) ;; *)
    if ! id -u "$user" > /dev/null 2>&1; then fail "$i" 64 "no user $user"; continue; fi
    users="$users$user "
  esac
  case $groups in *" $group "*) ;; *)
    if ! getent group "$group" > /dev/null 2>&1; then fail "$i" 65 "no group $group"; continue; fi
    groups="$groups$group "
  esac
  dir=${dest%/*}
  base=${dest##*/}
  case $refused in *"$nl$dir$tab"*)
    why=${refused#*"$nl$dir$tab"}
    fail "$i" 67 "${why%%"$nl"*}"
    continue
  esac
  case $dirs in *"$nl$dir$tab"*) ;; *)
    if ! safe_path "$dir" make; then refused="$refused$dir$tab$why$nl"; fail "$i" 67 "$why"; continue; fi
    ndirs=$((ndirs + 1))
    eval "stage_$ndirs=\$(mktemp -d \"\$dir/.nix-hive-keys.XXXXXX\")"
    dirs="$dirs$dir$tab$ndirs$nl"
  esac
  d=${dirs#*"$nl$dir$tab"} d=${d%%"$nl"*}
  if [ -L "$dest" ]; then fail "$i" 67 "$dest is a symbolic link: refused"; continue; fi
  if [ -e "$dest" ] && [ ! -f "$dest" ]; then fail "$i" 67 "$dest is not a regular file: refused"; continue; fi
  eval "file=\$stage_$d/\$base"
  : > "$file"
  eval "f_$i=\$file"
  printf '%s\0' "$base" >> "$work/names.$d"
  printf '%s %s %s\n' "$i" "$want" "$size" >> "$work/wants.$d"
  number owners "$user:$group"
  if [ "$at" -ne 0 ]; then printf '%s\0' "$file" >> "$work/owner.$at"; fi
  case $mode in 600 | 0600) ;; *) printf '%s\0' "$file" >> "$work/mode.$mode" ;; esac
done
if [ -n "$run" ]; then echo "small $run $bytes" >> "$work/plan"; fi

# 2. Each file given its owner and mode, all before any content: one chown per owner, one
# chmod per mode (owners first: a chown clears set-user-ID bits).
set -f
IFS=$nl
for entry in $owners; do
  o=${entry##*"$tab"}
  if [ -e "$work/owner.$o" ]; then xargs -0r chown -- "${entry%"$tab"*}" < "$work/owner.$o"; fi
done
IFS=' '
set +f
for list in "$work"/mode.*; do
  if [ -e "$list" ]; then xargs -0r chmod -- "${list##*.}" < "$list"; fi
done
set -f

# 3. The contents, in order, as the plan says (a refused key's are read and dropped). A big
# key's by its own `head -c`. A run of small ones by one `head -c`, and written into their
# files by the shell itself, no process per key: od writes each byte as ` ooo` (octal), tr
# makes that `\ooo`, the escape printf turns back into the byte (NUL included), and awk cuts
# those lines at the keys' lengths into commands `put N "\ooo..."`, at most 4 KiB of content
# each, which the shell then runs. A stream cut short leaves the keys from the cut on shorter
# than their lengths (step 4 fails them). The contents stay in memory and pipes, never in a
# file but their own.
put() {  # N ESCAPES: append the bytes ESCAPES stands for to key N's file (none for a refused key)
  eval "file=\$f_$1"
  # shellcheck disable=SC2059 # the format is the bytes: \ooo escapes only (no %)
  if [ -n "$file" ]; then printf "$2" >> "$file"; fi
}
exec 3<&0
while read -r part first bytes; do
  if [ "$part" = big ]; then
    eval "file=\$f_$first"
    head -c "$bytes" <&3 > "${file:-/dev/null}"
    continue
  fi
  if [ "$bytes" -eq 0 ]; then continue; fi
  # shellcheck disable=SC1003 # tr's '\\': a backslash
  eval "$(head -c "$bytes" <&3 | od -An -v -to1 | tr ' ' '\\' | LC_ALL=C awk -v k="$first" '
    function flush() { if (out != "") printf "put %d \"%s\"\n", k, out; out = "" }
    NR == FNR { last = k + FNR - 1; left[last] = $1; next }
    {
      line = $0
      while (line != "") {
        while (k <= last && left[k] == 0) k++
        if (k > last) break
        take = length(line) / 4
        if (take > left[k]) take = left[k]
        out = out substr(line, 1, take * 4)
        line = substr(line, take * 4 + 1)
        left[k] -= take
        if (left[k] == 0 || length(out) >= 16384) flush()
      }
    }
    END { flush() }' "$work/sizes.$first" -)"
done < "$work/plan"

# 4. Each file's SHA-256 against the one its line gave: one sha256sum per directory (a line per
# file, in order; one whose name has a backslash starts with a backslash), compared by awk;
# a file that arrived altered is removed.
stage=''
n=0
while [ "$n" -lt "$ndirs" ]; do
  n=$((n + 1))
  if [ ! -e "$work/names.$n" ]; then continue; fi
  eval "stage=\$stage_$n"
  (cd "$stage" && xargs -0r sha256sum --) < "$work/names.$n" > "$work/sums.$n" || :
  LC_ALL=C awk 'FILENAME == ARGV[1] { sub(/^\\/, ""); got[FNR] = substr($0, 1, 64); next }
                got[FNR] != $2 { print $1, $3 }' "$work/sums.$n" "$work/wants.$n" > "$work/altered"
  while read -r i size; do
    eval "file=\$f_$i"
    fail "$i" 66 "the content arrived altered ($(($(wc -c < "$file"))) of $size bytes, another SHA-256): not installed"
    rm -f -- "$file"
  done < "$work/altered"
done

# 5. The renames: one mv per directory of the files its private one holds (find: no limit on
# their number); a file still there was not renamed.
n=0
while [ "$n" -lt "$ndirs" ]; do
  n=$((n + 1))
  eval "stage=\$stage_$n"
  dir=${dirs%%"$tab$n$nl"*}
  dir=${dir##*"$nl"}
  (cd "$stage" && find . -mindepth 1 -maxdepth 1 -print0 | xargs -0r mv -f -t "$dir/" --) || :
  if rmdir -- "$stage" 2> /dev/null; then continue; fi
  i=0
  while [ "$i" -lt "$count" ]; do
    i=$((i + 1))
    eval "file=\$f_$i"
    case $file in "$stage"/*)
      if [ -e "$file" ] || [ -L "$file" ]; then fail "$i" 1 "${dir}/${file##*/}: its rename failed: not installed"; fi
    esac
  done
done
if [ "$failed" -ne 0 ]; then exit 68; fi
