#!/bin/sh
# Container entrypoint: a service name runs that service, anything else runs as a command.
#   switchboard-entrypoint gateway            -> exec python -m services.gateway
#   switchboard-entrypoint switchboard status -> exec switchboard status
set -eu
if [ "$#" -eq 0 ]; then
  echo "usage: <gateway|session|tools|recorder|localmodel> | <command ...>" >&2
  exit 64
fi
case "$1" in
  gateway|session|tools|recorder|localmodel)
    service="$1"
    shift
    exec python -m "services.${service}" "$@"
    ;;
  *)
    exec "$@"
    ;;
esac
