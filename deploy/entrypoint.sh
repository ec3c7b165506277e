#!/bin/sh
# One image, four roles: the command names the role; anything else runs as given
# (EcsRunLauncher starts runs with `dagster api execute_run ...`).
set -eu
workspace="$(dirname "$0")/workspace.yaml"  # /opt/data-acq/deploy/ in the image
case "${1:-}" in
  webserver)
    exec dagster-webserver -h 0.0.0.0 -p "${PORT:-3000}" -w "$workspace" ;;
  daemon)
    exec dagster-daemon run -w "$workspace" ;;
  code-server)
    exec dagster code-server start -h 0.0.0.0 -p "${PORT:-4000}" -m data_acq.definitions ;;
  "")
    echo "usage: webserver | daemon | code-server | <command>" >&2; exit 2 ;;
  *)
    exec "$@" ;;
esac
