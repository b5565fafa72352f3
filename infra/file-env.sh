#!/bin/sh
# file-env: NAME_FILE=/path exports NAME=<the file's content>, then runs the command.
# Docker's secrets convention (the postgres image's POSTGRES_PASSWORD_FILE), for commands that
# only read environment variables (mlflow server, optuna-dashboard, the postgres entrypoint):
# the secret stays off the command line and out of `docker inspect`. A NAME already set wins.
# A missing file is waited for (the one-shot `init` service writes it on first start).
set -eu
for name in $(env | sed -n 's/^\([A-Za-z_][A-Za-z0-9_]*\)_FILE=.*/\1/p'); do
  eval "path=\${${name}_FILE}"
  eval "given=\${${name}:-}"
  [ -z "$given" ] || continue
  waited=0
  until [ -s "$path" ]; do
    [ "$waited" -lt "${FILE_ENV_WAIT_S:-120}" ] || { echo "file-env: no $path (is the init service done?)" >&2; exit 1; }
    sleep 1; waited=$((waited + 1))
  done
  value=$(cat "$path")
  export "$name=$value"
  unset "${name}_FILE"
done
exec "$@"
