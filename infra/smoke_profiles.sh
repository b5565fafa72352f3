#!/usr/bin/env bash
# The `distributed` and `dashboard` profiles in a real Docker engine, from a clean state to a
# clean state: the trainer builds its features on the profile's Dask cluster, two `tuner`
# services continue its Optuna study on Postgres to TUNE_TRIALS finished trials, optuna-dashboard
# shows the study, the API serves the champion; `down -v` leaves nothing behind.
set -euo pipefail
cd "$(dirname "$0")/.."
export MLOPS_DASK_SCHEDULER=tcp://dask-scheduler:8786 TUNE_TRIALS=${TUNE_TRIALS:-8}
export RETRAIN_CRON="0 0 1 1 *"  # no scheduled retrain during the check
API=${API:-http://127.0.0.1:${API_PORT:-8000}}
DASHBOARD=${DASHBOARD:-http://127.0.0.1:${DASHBOARD_PORT:-8080}}
TUNERS=2
compose() { docker compose --profile distributed --profile dashboard "$@"; }
say() { printf '[profiles %4ds] %s\n' "$((SECONDS - start))" "$*"; }
fail() { say "FAILED: $*"; compose ps -a; compose logs --tail 30 trainer tuner dashboard || true; exit 1; }
sql() { compose exec -T postgres psql -U "${POSTGRES_USER:-mlops}" -d optuna -At -c "$1"; }

compose down -v --remove-orphans >/dev/null 2>&1 || true
compose build --quiet
start=$SECONDS
say "up with --scale tuner=$TUNERS (clean state)"
compose up -d --scale tuner=$TUNERS >/dev/null 2>&1 || fail "up"
[ "$(compose ps -a trainer --format '{{.State}}')" = exited ] || fail "the trainer is still running"
# read whole before grep: `grep -q` stops early and the writer's SIGPIPE fails the pipeline
trainer_log=$(compose logs --no-color trainer 2>&1)
grep -q "connecting to the Dask scheduler at" <<<"$trainer_log" \
  || fail "the trainer did not use the profile's Dask cluster"
say "trainer done on the Dask cluster ($(compose ps -a trainer --format '{{.Status}}'))"
until [ -z "$(compose ps tuner --status running -q)" ]; do
  [ "$SECONDS" -lt $((start + 900)) ] || fail "the tuners did not finish"
  sleep 5
done
for code in $(compose ps -a tuner --format '{{.ExitCode}}'); do
  [ "$code" = 0 ] || fail "a tuner exited with $code"
done
finished=$(sql "select count(*) from trials where state in ('COMPLETE', 'PRUNED')")
workers=$(sql "select count(distinct value_json) from trial_user_attributes where key = 'worker'")
say "study: $finished finished trials (budget $TUNE_TRIALS) from $workers worker processes"
[ "$finished" -ge "$TUNE_TRIALS" ] || fail "the study has $finished finished trials"
[ "$workers" -ge $((TUNERS + 1)) ] || fail "only $workers processes ran trials"
studies=$(curl -sf "$DASHBOARD/api/studies") || fail "optuna-dashboard does not answer"
grep -q flight-delay <<<"$studies" || fail "optuna-dashboard does not show the study"
say "optuna-dashboard shows the study"
denied=$(compose exec -T postgres psql -U dashboard -d optuna -At -c "delete from studies" 2>&1 || true)
grep -q "permission denied" <<<"$denied" || fail "optuna-dashboard's role may delete studies: $denied"
say "optuna-dashboard's role reads only (delete from studies: permission denied)"
curl -sf "$API/v2/health/ready" >/dev/null || fail "the API is not ready"
say "the API serves v$(curl -sf "$API/model" | python3 -c 'import json,sys; print(json.load(sys.stdin)["version"])')"
compose down -v --remove-orphans >/dev/null 2>&1
left=$(docker volume ls -q --filter label=com.docker.compose.project="${COMPOSE_PROJECT_NAME:-mlops-flights}")
[ -z "$left" ] || fail "volumes left behind: $left"
say "down -v: nothing left behind"
echo "PROFILES OK finished_trials=$finished workers=$workers"
