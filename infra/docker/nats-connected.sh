#!/bin/sh
# Liveness/readiness probe for the NATS-only services (session, tools): exit 0 when this container's
# network namespace holds an ESTABLISHED TCP connection to the port of SWITCHBOARD_NATS_URL (each URL of
# a comma-separated list; default port 4222), else exit 1.
#
# Why this is a faithful signal: the service's only link to its work is its NATS connection. nats-py
# reconnects on its own after a loss; while it is disconnected the pod can take no calls or tool requests
# (not ready). If the event loop hangs, the client stops answering the server's PINGs and nats-server closes
# the connection after ping_interval x ping_max (20 s x 3 with infra/nats/values.yaml), so liveness fails
# too. It costs one awk over /proc/net/tcp{,6} (a few ms), unlike starting Python to send $SRV.PING, and it
# checks THIS pod, whereas `$SRV.PING.switchboard-<name>` is answered by any instance.
# Reads /proc/net/tcp and /proc/net/tcp6 (override the directory with PROC_NET for tests).
set -eu
urls="${SWITCHBOARD_NATS_URL:-nats://127.0.0.1:4222}"
proc="${PROC_NET:-/proc/net}"
files=""
for f in "$proc/tcp" "$proc/tcp6"; do
  if [ -r "$f" ]; then files="$files $f"; fi
done
[ -n "$files" ] || exit 1
ports=""
for url in $(printf '%s' "$urls" | tr ',' ' '); do
  hostport="${url#*://}"
  hostport="${hostport##*@}"
  hostport="${hostport%%/*}"
  port="${hostport##*:}"
  case "$port" in
    ''|*[!0-9]*) port=4222 ;;
  esac
  ports="$ports $(printf '%04X' "$port")"
done
# /proc/net/tcp columns: sl local_address rem_address st ...; st 01 = ESTABLISHED; addresses are HEX:PORT
# shellcheck disable=SC2086
exec awk -v ports="$ports" '
  BEGIN { n = split(ports, want, " "); for (i = 1; i <= n; i++) ok[want[i]] = 1 }
  $4 == "01" { k = split($3, a, ":"); if (a[k] in ok) { found = 1; exit } }
  END { exit found ? 0 : 1 }
' $files
