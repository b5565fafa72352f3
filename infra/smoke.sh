#!/usr/bin/env bash
# The stack end to end in a real Docker engine, from a clean state to a clean state:
#   up -> API ready -> /predict and V2 infer -> MLflow UI shows the run and the champion ->
#   two schedulers tick at once (one retrains, one skips) -> the API serves the new version ->
#   down -v leaves nothing behind. Prints the timings benchmarks/RESULTS.md records.
# With MLFLOW_AUTH=1 (and MLFLOW_AUTH_ADMIN_PASSWORD, MLFLOW_TRACKING_USERNAME/PASSWORD, as in
# .env.example) the same run goes through MLflow's basic auth, and anonymous calls must get 401.
set -euo pipefail
cd "$(dirname "$0")/.."
API=${API:-http://127.0.0.1:${API_PORT:-8000}}
MLFLOW=${MLFLOW:-http://127.0.0.1:${MLFLOW_PORT:-5000}}
# a fresh token per run: the API refuses placeholders such as change-me
export MLOPS_SERVE__ADMIN_TOKEN=${MLOPS_SERVE__ADMIN_TOKEN:-$(python3 -c "import secrets; print(secrets.token_hex(16))")}
TOKEN=$MLOPS_SERVE__ADMIN_TOKEN
compose() { docker compose "$@"; }
say() { printf '[smoke %4ds] %s\n' "$((SECONDS - start))" "$*"; }
fail() { say "FAILED: $*"; compose ps; compose logs --tail 40 trainer api scheduler mlflow || true; exit 1; }
wait_for() {  # wait_for <seconds> <command...>
  local limit=$1; shift
  local until=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$until" ] || return 1
    sleep 2
  done
}
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
credentials=()
if [ -n "${MLFLOW_AUTH:-}" ]; then
  : "${MLFLOW_TRACKING_USERNAME:?MLFLOW_AUTH=1 needs MLFLOW_TRACKING_USERNAME}"
  : "${MLFLOW_TRACKING_PASSWORD:?MLFLOW_AUTH=1 needs MLFLOW_TRACKING_PASSWORD}"
  credentials=(-u "$MLFLOW_TRACKING_USERNAME:$MLFLOW_TRACKING_PASSWORD")
fi
mlflow_api() { curl -sf "${credentials[@]}" "$@"; }

compose down -v --remove-orphans >/dev/null 2>&1 || true
compose build --quiet
start=$SECONDS
say "up (clean state)"
compose up -d
wait_for 1200 curl -sf "$API/v2/health/ready" || fail "the API never became ready"
say "API ready"
flight='{"flights": [{"carrier": "UA", "flight": 1545, "tailnum": "N14228", "origin": "EWR",
  "dest": "IAH", "scheduled_departure": "2013-12-01T05:15:00", "distance": 1400}]}'
first=$(curl -sf "$API/predict" -H 'Content-Type: application/json' -d "$flight") \
  || fail "/predict"
first_prediction=$((SECONDS - start))
version=$(echo "$first" | json 'd["model"]["version"]')
say "first prediction after ${first_prediction}s: $(echo "$first" | json 'd["predictions"][0]["delay_probability"]') from v$version"
curl -sf "$API/v2/models/flight-delay/infer" -H 'Content-Type: application/json' -d '{"inputs": [
  {"name": "carrier", "shape": [1], "datatype": "BYTES", "data": ["UA"]},
  {"name": "flight", "shape": [1], "datatype": "INT64", "data": [1545]},
  {"name": "origin", "shape": [1], "datatype": "BYTES", "data": ["EWR"]},
  {"name": "dest", "shape": [1], "datatype": "BYTES", "data": ["IAH"]},
  {"name": "scheduled_departure", "shape": [1], "datatype": "BYTES", "data": ["2013-12-01T05:15:00"]}]}' \
  | json 'd["outputs"][0]["data"]' >/dev/null || fail "V2 infer"
say "V2 infer answers"

if [ -n "${MLFLOW_AUTH:-}" ]; then
  anonymous=$(curl -s -o /dev/null -w '%{http_code}' "$MLFLOW/api/2.0/mlflow/experiments/search?max_results=1")
  [ "$anonymous" = 401 ] || fail "MLflow answered $anonymous to an anonymous call (auth is on)"
  say "MLflow basic auth: anonymous 401, the services' credentials accepted"
fi
mlflow_api "$MLFLOW/" >/dev/null || fail "the MLflow UI"
runs=$(mlflow_api "$MLFLOW/api/2.0/mlflow/runs/search" -H 'Content-Type: application/json' \
  -d '{"experiment_ids": ["1"], "max_results": 100}' | json 'len(d.get("runs", []))')
champion=$(mlflow_api "$MLFLOW/api/2.0/mlflow/registered-models/alias?name=flight-delay&alias=champion" \
  | json 'd["model_version"]["version"]') || fail "no champion in the registry"
[ "$runs" -ge 1 ] || fail "no training run in MLflow"
say "MLflow UI answers: $runs runs, champion v$champion"

say "two schedulers tick at once (the smoke lowers the gate so the challenger is promoted)"
compose exec -T -e MLOPS_GATE__MIN_AUC_GAIN=-1 scheduler mlops schedule --once > /tmp/smoke-tick-1.log 2>&1 &
one=$!
sleep 3
compose run --rm -T -e MLOPS_GATE__MIN_AUC_GAIN=-1 --no-deps scheduler mlops schedule --once > /tmp/smoke-tick-2.log 2>&1 \
  || fail "second scheduler"
wait $one || fail "first scheduler: $(tail -5 /tmp/smoke-tick-1.log)"
grep -q "tick: skipped" /tmp/smoke-tick-2.log || fail "the second scheduler did not skip: $(tail -5 /tmp/smoke-tick-2.log)"
grep -q "tick: promoted" /tmp/smoke-tick-1.log || fail "the retrain did not promote: $(tail -5 /tmp/smoke-tick-1.log)"
retrained=$((SECONDS - start))
say "retrain done after ${retrained}s; the second scheduler skipped"
new=$(mlflow_api "$MLFLOW/api/2.0/mlflow/registered-models/alias?name=flight-delay&alias=champion" \
  | json 'd["model_version"]["version"]')
wait_for 120 sh -c "curl -sf $API/model | grep -q '\"version\":\"$new\"'" || fail "the API never served v$new"
say "the API serves v$new (was v$version)"

compose down -v --remove-orphans >/dev/null
left=$(docker volume ls -q --filter label=com.docker.compose.project=mlops-flights | wc -l)
[ "$left" -eq 0 ] || fail "$left volumes left behind"
say "down -v: nothing left behind"
echo "SMOKE OK first_prediction_s=$first_prediction retrain_done_s=$retrained"
