#!/bin/sh
# nix-hive's pull agent (docs/pull-agent.md; the record and the cache: docs/pull.md): one poll of a binary cache
# for this host's newest deployment record, as root, run by nix-hive-agent.service (nix/agent.nix)
# from the directory that also holds activate.sh, runnable.sh and inhibitors.sh. Configuration:
#
#   NIX_HIVE_CACHE       C, the cache's base URL (http://cache:8080)
#   NIX_HIVE_PUBLIC_KEY  the deployment's signing key, name:base64
#   NIX_HIVE_INSTANCE    this host's instance name; unset or empty: the first line of
#                        STATE/instance (written when the host is installed: a system that
#                        many instances share cannot hold each one's name), else the host's
#                        name (uname -n)
#   NIX_HIVE_STATUS      where the status document goes: STATUS/INSTANCE.json (default
#                        C/nix-hive/status); a URL with a query (an S3 presigned PUT URL) is
#                        this host's document itself
#   NIX_HIVE_STATE       the agent's state directory (default /var/lib/nix-hive-agent)
#   NIX_HIVE_CONFIRM     seconds the checks and the reachability proof may take before the host
#                        rolls back by itself (activate.sh's confirmation window; default 60)
#   NIX_HIVE_TIMEOUT     seconds the switch may take (default 600); also bounds the fetch
#
# A poll: GET C/nix-hive/pointers/INSTANCE (one line: a record's store path); the record handled
# last (applied, refused or failed: STATE/last) -> a heartbeat status, done. Else fetch the record
# and the system it references (`nix copy --from C`: Nix checks every path's signature against
# the host's trusted-public-keys and every NAR's hash), verify the record alone against the
# deployment's key only (signed_by_key below: a plain `nix store verify RECORD` would
# pass any record, a content-addressed path), check its format, instance and serial (greater
# than the one applied: no replay, no downgrade), then activate its system with activate.sh
# (host lock, a transient unit of its own, timeout, rollback, confirmation window), run the
# record's checks on this host, GET the pointer again (the host can still be managed), and only
# then confirm; any failure aborts, and activate.sh rolls back. Then PUT the status (JSON).
#
# State: STATE/applied ("PATH SERIAL TIME" of the record running, confirmed), STATE/last (the record
# last handled: path, serial, outcome, reason, activation directory, the record's time; one per
# line: a heartbeat reports that time, so a record that stops changing shows its age), written
# before the activation starts (outcome "activating"), so that an agent stopped mid-activation
# does not try the same record again: the next poll reads what activate.sh did with it (the
# host rolled back by itself, unconfirmed) and reports that once.
#
# A fetch that fails while the cache does not even answer for nix-cache-info is no verdict on the
# record: it is not written to STATE/last, the next poll tries again. Exit status: 0 when the
# poll ended with its status stored, 1 when the cache or the status location could not be
# reached (systemd shows the unit failed), 2 for a bad configuration.
#
# Choices (docs/pull-agent.md says them to users): the record's
# signature is checked by signed_by_key, not by `nix store verify RECORD` (which passes any
# content-addressed path, so any record); a fetch that fails while the cache does not answer is
# retried next poll, not remembered as handled; a refused record's status carries the serial its
# name claims (its content may be unreadable); a heartbeat names the record handled last (path,
# serial, time); the poll after an agent stopped mid-activation reports that activation's end
# once (rolled-back, ok or failed), then heartbeats; NIX_HIVE_STATUS with a query is the
# document's own URL (S3 presigned).
set -u
umask 022
# a systemd unit starts with systemd's default PATH: NixOS keeps its tools elsewhere
PATH="/run/current-system/sw/bin:/nix/var/nix/profiles/default/bin:$PATH"
export PATH
here=$(cd "$(dirname "$0")" && pwd)

fail_config() { echo "nix-hive-agent: $1" >&2; exit 2; }
cache=${NIX_HIVE_CACHE:-}
key=${NIX_HIVE_PUBLIC_KEY:-}
instance=${NIX_HIVE_INSTANCE:-}
[ -n "$cache" ] || fail_config "NIX_HIVE_CACHE is not set"
[ -n "$key" ] || fail_config "NIX_HIVE_PUBLIC_KEY is not set"
cache=${cache%/}
state=${NIX_HIVE_STATE:-/var/lib/nix-hive-agent}
if [ -z "$instance" ] && [ -s "$state/instance" ]; then IFS= read -r instance < "$state/instance" || :; fi
if [ -z "$instance" ]; then instance=$(uname -n); fi
case $instance in
  "" | *[!A-Za-z0-9._-]* | .*) fail_config "NIX_HIVE_INSTANCE must be an instance name (letters, digits, . _ -)" ;;
esac
status_url=${NIX_HIVE_STATUS:-$cache/nix-hive/status}
status_url=${status_url%/}
confirm=${NIX_HIVE_CONFIRM:-60}
limit=${NIX_HIVE_TIMEOUT:-600}
for n in "$confirm" "$limit"; do
  case $n in "" | *[!0-9]*) fail_config "NIX_HIVE_CONFIRM and NIX_HIVE_TIMEOUT are whole seconds" ;; esac
done
[ "$confirm" -gt 0 ] || fail_config "NIX_HIVE_CONFIRM must be at least 1 s: the host confirms what it can still reach"
http=30  # seconds for one HTTP request
tab=$(printf '\t')
store_re='^/nix/store/[0-9a-df-np-sv-z]\{32\}-[A-Za-z0-9+._?=-][A-Za-z0-9+._?=-]*$'

if ! { mkdir -p "$state" && chmod 700 "$state"; }; then exit 2; fi
exec 8> "$state/lock"
if ! flock -n 8; then echo "nix-hive-agent: another poll is under way" >&2; exit 0; fi

now() { date -u +%Y-%m-%dT%H:%M:%SZ; }
started=$(now)
log() { echo "nix-hive-agent: $1" >&2; }
# one line of printable text, at most 400 characters
line() { printf '%s' "$1" | tr '\n\t\r' '   ' | tr -d '\000-\037\177' | cut -c 1-400; }
js() {  # a JSON string (null when empty)
  if [ -z "$1" ]; then printf null; return; fi
  printf '"%s"' "$(line "$1" | sed 's/\\/\\\\/g; s/"/\\"/g')"
}
jn() { case $1 in "" | *[!0-9]*) printf null ;; *) printf '%s' "$1" ;; esac; }
put() {  # NAME VALUE: write STATE/NAME whole
  printf '%s\n' "$2" > "$state/$1.tmp" && mv -f "$state/$1.tmp" "$state/$1"
}
get() {  # URL: the body on stdout, bounded; curl's complaint on stderr
  curl -fsS --max-time "$http" --retry 2 --retry-delay 1 "$1"
}

applied_path=; applied_serial=; applied_time=
if [ -r "$state/applied" ]; then read -r applied_path applied_serial applied_time < "$state/applied" || true; fi
last_path=; last_serial=; last_outcome=; last_reason=; last_dir=; last_time=
if [ -r "$state/last" ]; then
  { read -r last_path; read -r last_serial; read -r last_outcome; read -r last_reason; read -r last_dir
    read -r last_time; } < "$state/last"
fi

record=; serial=; rtime=; outcome=; reason=
report() {  # OUTCOME REASON: the status document, stored and PUT; then exit
  outcome=$1; reason=$2
  current=$(readlink -f /run/current-system 2>/dev/null || true)
  {
    printf '{"format": "nix-hive-status-1", "instance": %s, "system": %s, "record": %s, ' \
      "$(js "$instance")" "$(js "$current")" "$(js "$record")"
    printf '"serial": %s, "record_time": %s, "outcome": %s, "reason": %s, ' \
      "$(jn "$serial")" "$(js "$rtime")" "$(js "$outcome")" "$(js "$reason")"
    printf '"started": %s, "finished": %s, "applied_serial": %s}\n' \
      "$(js "$started")" "$(js "$(now)")" "$(jn "$applied_serial")"
  } > "$state/status.json.tmp" && mv -f "$state/status.json.tmp" "$state/status.json"
  log "$outcome: $reason"
  where=$status_url/$instance.json
  case $status_url in *\?*) where=$status_url ;; esac
  if ! err=$(curl -fsS --max-time "$http" --retry 2 --retry-delay 1 -X PUT -H 'Content-Type: application/json' \
      --data-binary "@$state/status.json" -o /dev/null "$where" 2>&1); then
    log "cannot store the status at $where: $(line "$err")"
    exit 1
  fi
  exit 0
}
remember() {  # OUTCOME REASON [DIR]: STATE/last for the record at hand
  put last "$record
$serial
$1
$(line "$2")
${3:-}
$rtime"
}
finish() {  # OUTCOME REASON: remembered (not retried until the pointer changes), then reported
  remember "$1" "$2"
  report "$1" "$2"
}

# signed_by_key PATH: whether PATH, as this host's store holds it (its NAR hash, size and
# references), carries a signature of the deployment's key ($key). Not `nix store verify PATH`:
# a record is builtins.toFile's, a content-addressed path, and Nix counts every content-addressed
# path as trusted whatever its signatures (nix copy takes it unsigned, and store verify passes
# it): anyone could write a record. So the path's own facts and its signatures (nix copy kept the
# cache's) are written as the narinfo of a throwaway file:// cache, without the CA field, and
# `nix store verify --no-contents` checks them there, where only a signature can make it valid.
# The signature covers the fingerprint "1;PATH;NARHASH;NARSIZE;REFS", which has no CA field.
signed_by_key() {
  v=$(mktemp -d) || { echo "mktemp failed"; return 1; }
  name=${key%%:*}
  base=${1#/nix/store/}
  sigs=$(nix --extra-experimental-features nix-command path-info --sigs "$1" 2>/dev/null \
    | awk '{ for (i = 2; i <= NF; i++) print $i }' | grep "^$name:" | sed 's/^/Sig: /')
  {
    echo "StorePath: $1"
    echo "URL: nar/none.nar"
    echo "Compression: none"
    echo "NarHash: $(nix-store -q --hash "$1")"
    echo "NarSize: $(nix-store -q --size "$1")"
    echo "References: $(nix-store -q --references "$1" | sed 's|^/nix/store/||' | tr '\n' ' ' | sed 's/ $//')"
    [ -z "$sigs" ] || printf '%s\n' "$sigs"
  } > "$v/${base%%-*}.narinfo"
  printf 'StoreDir: /nix/store\n' > "$v/nix-cache-info"
  if [ -z "$sigs" ]; then rm -rf "$v"; echo "no signature by $name"; return 1; fi
  out=$(nix --extra-experimental-features nix-command store verify --store "file://$v" --no-contents \
    --option trusted-public-keys "$key" --sigs-needed 1 "$1" 2>&1)
  rc=$?
  rm -rf "$v"
  [ $rc -eq 0 ] || { line "$(printf '%s' "$out" | grep -v '^warning:' | tail -n 2)"; return 1; }
}

# 1. the pointer
if ! pointer=$(get "$cache/nix-hive/pointers/$instance" 2>"$state/curl.err"); then
  report failed "cannot read the pointer $cache/nix-hive/pointers/$instance: $(line "$(cat "$state/curl.err")")"
fi
record=$(printf '%s\n' "$pointer" | head -n 1)
# the serial its name claims (the record's own is checked once it is verified)
serial=${record##*-}
case $serial in "" | *[!0-9]*) serial= ;; esac
if [ "$(printf '%s\n' "$pointer" | wc -l)" -ne 1 ] || ! printf '%s\n' "$record" | grep -q "$store_re" \
    || case $record in /nix/store/*-nix-hive-record-*) false ;; *) true ;; esac; then
  record=$(line "$record"); serial=
  if [ "$record" = "$last_path" ]; then report unchanged "no new record (the pointer still names no record)"; fi
  finish refused "the pointer names no record: $record"
fi

# 2. the record handled last: a heartbeat (and what became of an activation the agent left)
if [ "$record" = "$last_path" ]; then
  serial=$last_serial; rtime=$last_time
  if [ "$last_outcome" = activating ]; then
    s=$(cat "$last_dir/state" 2>/dev/null || echo gone)
    case $s in
      confirmed)
        put applied "$record $serial $rtime"; applied_serial=$serial
        finish ok "confirmed (by an earlier poll that stopped before it reported)" ;;
      rolled-back*) finish rolled-back "the agent stopped during the activation; the host rolled back by itself ($s)" ;;
      failed-* | timed-out | busy* | abandoned | gone)
        finish failed "the agent stopped during the activation; the activation ended: $s" ;;
      *) report unchanged "an earlier poll's activation is under way ($s)" ;;
    esac
  fi
  if [ "$record" = "$applied_path" ]; then report unchanged "running the record applied (serial $applied_serial)"; fi
  report unchanged "no new record (this one was $last_outcome: $last_reason)"
fi
if [ "$record" = "$applied_path" ]; then
  serial=$applied_serial; rtime=$applied_time
  finish unchanged "running the record applied (serial $applied_serial)"
fi

# 3. fetch, verify, read
log "fetching $record from $cache"
# Nix remembers for an hour that a cache lacked a path (narinfo-cache-negative-ttl): the next
# poll must ask the cache again, as a path it lacks now may come (a cache being filled).
if ! timeout -k 10 "$limit" nix --extra-experimental-features nix-command copy --from "$cache" "$record" \
    --option narinfo-cache-negative-ttl 0 2>"$state/nix.err"; then
  said=$(grep -v '^warning:' "$state/nix.err" | tail -n 3 | tr '\n' ' ')
  if ! get "$cache/nix-cache-info" > /dev/null 2>&1; then
    report failed "cannot fetch the record (the cache does not answer): $said"
  fi
  case $said in
    # a path of the closure the cache does not hold (an upload not finished, a cache emptied or
    # collected): no verdict on the record, asked again next poll
    *"is not valid"*|*"does not exist in binary cache"*)
      report failed "the cache lacks part of the record's closure (asked again next poll): $said" ;;
  esac
  finish refused "the cache's record or closure was refused by Nix (signatures, hashes): $said"
fi
if ! said=$(signed_by_key "$record"); then
  finish refused "the record is not signed by the deployment's key: $said"
fi
refs=$(nix-store -q --references "$record" 2>/dev/null)
n=0; k=; v=; rest=
expect() {  # KEY: the next line must be KEY<TAB>VALUE (into $v)
  if ! { IFS=$tab read -r k v rest <&7 && [ "$k" = "$1" ] && [ -n "$v" ] && [ -z "$rest" ]; }; then
    finish refused "the record is malformed (line $((n + 1)): expected $1)"
  fi
  n=$((n + 1))
}
exec 7< "$record"
expect format; [ "$v" = nix-hive-record-1 ] || finish refused "the record's format is $v, not nix-hive-record-1"
expect instance; [ "$v" = "$instance" ] || finish refused "the record is for the instance $v, not $instance"
expect system; system=$v
expect serial; serial=$v
case $serial in *[!0-9]*) serial=; finish refused "the record's serial is not a number" ;; esac
expect time; rtime=$v
expect wave; expect run
if ! printf '%s\n' "$system" | grep -q "$store_re" || [ "$refs" != "$system" ]; then
  finish refused "the record's system $system is not the one store path it references"
fi
if [ -n "$applied_serial" ] && [ "$serial" -le "$applied_serial" ]; then
  finish refused "the record's serial $serial is not newer than the one applied ($applied_serial): a replay or a downgrade"
fi
# the checks, validated before anything moves
checks=$(cat <&7)
exec 7<&-
printf '%s\n' "$checks" | while IFS=$tab read -r tag name t r i kind a b; do
  [ -n "$tag$name" ] || continue
  ok=1
  [ "$tag" = check ] && [ -n "$name" ] || ok=0
  for x in "$t" "$r" "$i"; do case $x in "" | *[!0-9]*) ok=0 ;; esac; done
  case $kind in command) [ -n "$a" ] && [ -z "$b" ] || ok=0 ;; http) [ -n "$a" ] && [ -n "$b" ] || ok=0 ;; *) ok=0 ;; esac
  [ $ok = 1 ] || exit 1
done || finish refused "the record is malformed (a check line)"

# 4. activate (activate.sh, detached: a switch that restarts this unit leaves it be), check, prove
id="pull-$(date -u +%Y%m%d-%H%M%S)-$$"
d=/run/nix-hive/$id
if ! { mkdir -p /run/nix-hive "$d" && chmod 755 /run/nix-hive "$d"; }; then finish failed "cannot make $d"; fi
who=$(printf '%s' "nix-hive-agent@$(hostname 2>/dev/null || echo host)" | tr -c 'A-Za-z0-9._@-' _)
lockwait=$((confirm + 30))
remember activating "activation $id" "$d"
set -- "$d" /nix/var/nix/profiles/system "$system" switch "$limit" 1 "$confirm" "$lockwait" "$who" 0
if [ -d /run/systemd/system ] && command -v systemd-run > /dev/null 2>&1; then
  systemd-run --quiet --collect --no-ask-password --service-type=exec --unit="nix-hive-activate-$id" \
    sh "$here/activate.sh" "$@" || finish failed "systemd-run could not start the activation"
else
  setsid sh "$here/activate.sh" "$@" > /dev/null 2>&1 < /dev/null 8>&- &
fi
follow() {  # SECONDS STOP: the activation's state once it is STOP or an end state (or the time is up)
  i=0
  while [ "$i" -le $(($1 * 10)) ]; do
    s=
    if [ -r "$d/state" ]; then IFS= read -r s < "$d/state" || true; fi
    case $s in
      "$2" | done | confirmed | rolled-back* | timed-out | failed-* | busy* | abandoned) return 0 ;;
    esac
    sleep 0.1
    i=$((i + 1))
  done
}
ended() {  # the activation's end state: the outcome reported
  case $s in
    confirmed) put applied "$record $serial $rtime"; applied_serial=$serial
               finish ok "$system is running, checked and confirmed" ;;
    rolled-back*) finish rolled-back "$1; the host rolled back (${s#rolled-back })" ;;
    *) finish failed "$1; the activation ended: ${s:-no state}" ;;
  esac
}
follow $((lockwait + limit + 30)) waiting
case $s in
  waiting) ;;
  rolled-back*) ended "the switch failed" ;;
  *) ended "the activation did not complete" ;;
esac

why=
printf '%s\n' "$checks" > "$d/checks"
while IFS=$tab read -r tag name t r i kind a b; do
  [ "$tag" = check ] || continue
  try=0
  while :; do
    try=$((try + 1))
    if [ "$kind" = command ]; then
      out=$(timeout -k 5 "$t" sh -c "$a" 2>&1 < /dev/null 8>&-); rc=$?
      if [ $rc -eq 0 ]; then said=; else
        said="exit $rc"; [ $rc -eq 124 ] && said="timed out"
        lastline=$(printf '%s\n' "$out" | tail -n 1)
        [ -z "$lastline" ] || said="$said: $lastline"
      fi
    else
      code=$(curl -s -o /dev/null -w '%{http_code}' --max-time "$t" "$a" 2>/dev/null) || true
      said="HTTP $code"
      case ",$b," in
        ,-,) case $code in 2??) said= ;; esac ;;
        *",$code,"*) said= ;;
      esac
      [ "$code" != 000 ] || said="no HTTP answer from $a"
    fi
    [ -n "$said" ] || break
    if [ "$try" -gt "$r" ]; then why="check $name failed: $(line "$said")"; break; fi
    sleep "$i"
  done
  [ -z "$why" ] || break
done < "$d/checks"
if [ -z "$why" ] && ! get "$cache/nix-hive/pointers/$instance" > /dev/null 2>"$state/curl.err"; then
  why="the host cannot reach the cache after the switch: $(line "$(cat "$state/curl.err")")"
fi
if [ -n "$why" ]; then
  echo check-failed > "$d/abort"
else
  touch "$d/confirm"
fi
follow $((lockwait + limit + 30)) -
if [ -n "$why" ]; then ended "$why"; fi
ended "the confirmation came too late"
