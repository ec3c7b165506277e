#!/bin/sh
# One image, four roles: the command names the role; anything else runs as given
# (EcsRunLauncher starts runs with `dagster api execute_run ...`).
set -eu
here="$(dirname "$0")"  # /opt/data-acq/deploy/ in the image
workspace="$here/workspace.yaml"
if [ -z "${1:-}" ]; then
  echo "usage: webserver | daemon | code-server | <command>" >&2
  exit 2
fi
# Every role first writes the Dagster instance, $DAGSTER_HOME/dagster.yaml: deploy/dagster.yaml
# with the run queue sized from the DATA_ACQ_* settings. Settings that cannot be used stop the
# container here, with one line on stderr (exit code 1).
: "${DAGSTER_HOME:?is not set (the image sets it to /opt/dagster/home)}"
python "$here/render_instance.py" "$here/dagster.yaml" "$DAGSTER_HOME/dagster.yaml"
case "$1" in
  webserver)
    exec dagster-webserver -h 0.0.0.0 -p "${PORT:-3000}" -w "$workspace" ;;
  daemon)
    exec dagster-daemon run -w "$workspace" ;;
  code-server)
    exec dagster code-server start -h 0.0.0.0 -p "${PORT:-4000}" -m data_acq.definitions ;;
  *)
    exec "$@" ;;
esac
