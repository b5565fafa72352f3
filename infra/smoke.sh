#!/usr/bin/env bash
# The stack end to end in a real Docker engine, from a clean state to a clean state:
#   up -> API ready -> /predict and V2 infer -> MLflow UI shows the run and the champion ->
#   two schedulers tick at once (one retrains, one skips) -> the API serves the new version ->
#   down -v leaves nothing behind. Prints the timings benchmarks/RESULTS.md records.
# Closed by default, checked on the way: no .env needed (init generates the secrets), ports
# on 127.0.0.1 only, MLflow refuses anonymous calls and the API's own MLflow user cannot delete
# an experiment or move the alias, no secret in `docker inspect` or on a process's command
# line, the model's load in `docker compose logs api`.
# COMPOSE_PROJECT_NAME and MLOPS_VERSION (the images' tag) keep a test stack apart.
set -euo pipefail
cd "$(dirname "$0")/.."
. infra/smoke_lib.sh
API=${API:-http://127.0.0.1:${API_PORT:-8000}}
MLFLOW=${MLFLOW:-http://127.0.0.1:${MLFLOW_PORT:-5000}}
PROJECT=${COMPOSE_PROJECT_NAME:-mlops-flights}
compose() { docker compose "$@"; }
say() { printf '[smoke %4ds] %s\n' "$((SECONDS - start))" "$*"; }
fail() { say "FAILED: $*"; compose ps; compose logs --tail 40 trainer api scheduler mlflow sink redis || true; exit 1; }
secret() { compose run --rm --no-deps -T init get "$1" | tr -d '\r'; }
# curl reads the login from a file (-K), not from its own command line
login() { printf 'user = "%s:%s"\n' "$1" "$2" > "$3"; chmod 600 "$3"; }
netrc_dir=$(mktemp -d); trap 'rm -rf "$netrc_dir"' EXIT
mlflow_api() { curl -sf -K "$netrc_dir/admin" "$@"; }
as_api() { curl -s -o /dev/null -w '%{http_code}' -K "$netrc_dir/api" "$@"; }

compose down -v --remove-orphans >/dev/null 2>&1 || true
compose build --quiet
start=$SECONDS
say "up (clean state)"
compose up -d
wait_for 1800 curl -sf "$API/v2/health/ready" || fail "the API never became ready"
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
# an event through the API, the Redis stream and the sink into bronze
printf 'Authorization: Bearer %s\n' "$(secret events_token)" > "$netrc_dir/events"
event='{"events": [{"id": "smoke-wx-ewr-2014010218", "kind": "weather", "origin": "EWR",
  "time_hour": "2014-01-02T18:00:00", "temp": 28.0, "visib": 10.0}]}'
accepted=$(curl -sf "$API/v1/events" -H @"$netrc_dir/events" -H 'Content-Type: application/json' \
  -d "$event" | json 'd["accepted"]') || fail "/v1/events"
[ "$accepted" = 1 ] || fail "/v1/events accepted $accepted of 1"
sink_wrote() { compose logs sink | grep -q '1 weather hours to bronze'; }
wait_for 120 sink_wrote || fail "the sink never wrote the event to bronze"
say "an event: accepted by the API, through Redis, written to bronze by the sink"

say "closed by default:"
[ ! -e .env ] || say "  (a .env exists here: its settings apply)"
login admin "$(secret mlflow_admin_password)" "$netrc_dir/admin"
login api "$(secret mlflow_api_password)" "$netrc_dir/api"
for service in edge mlflow; do
  bound=$(compose port "$service" "$([ $service = edge ] && echo 8000 || echo 5000)")
  [ "${bound%:*}" = 127.0.0.1 ] || fail "$service is published on $bound"
done
for service in redis:6379 api:8000; do  # ":0" or nothing: not published
  bound=$(compose port "${service%:*}" "${service#*:}" 2>/dev/null || true)
  [ -z "${bound#:0}" ] || fail "${service%:*} is published on $bound"
done
say "  ports on 127.0.0.1 only (Redis and the API itself not at all: the API through the edge)"
anonymous=$(curl -s -o /dev/null -w '%{http_code}' "$MLFLOW/api/2.0/mlflow/experiments/search?max_results=1")
[ "$anonymous" = 401 ] || fail "MLflow answered $anonymous to an anonymous call"
[ "$(as_api "$MLFLOW/api/2.0/mlflow/experiments/search?max_results=1")" = 200 ] \
  || fail "the API's MLflow user cannot read"
experiment=$(mlflow_api "$MLFLOW/api/2.0/mlflow/experiments/get-by-name?experiment_name=flight-delay" \
  | json 'd["experiment"]["experiment_id"]') || fail "no experiment flight-delay"
deleted=$(as_api -X POST "$MLFLOW/api/2.0/mlflow/experiments/delete" -H 'Content-Type: application/json' \
  -d "{\"experiment_id\": \"$experiment\"}")
[ "$deleted" = 403 ] || fail "the API's MLflow user deleting the experiment got $deleted, not 403"
moved=$(as_api -X POST "$MLFLOW/api/2.0/mlflow/registered-models/alias" -H 'Content-Type: application/json' \
  -d '{"name": "flight-delay", "alias": "champion", "version": "1"}')
[ "$moved" = 403 ] || fail "the API's MLflow user moving the alias got $moved, not 403"
# least privilege in PostgreSQL (the socket in the container trusts local users: privileges only)
psql_as() { compose exec -T postgres psql -U "$1" -d "$2" -At -c "$3" 2>&1 || true; }
grep -q "permission denied" <<<"$(psql_as retrain_lock mlflow 'select 1')" \
  || fail "the lock's role may connect to the mlflow database"
grep -q "permission denied" <<<"$(psql_as retrain_lock "${POSTGRES_DB:-mlops}" 'create table t (i int)')" \
  || fail "the lock's role may create a table"
grep -q "permission denied" <<<"$(psql_as optuna mlflow 'select 1')" \
  || fail "Optuna's role may connect to the mlflow database"
say "  PostgreSQL: the lock's and Optuna's roles are refused outside their own"
say "  MLflow: anonymous 401; user api reads (200), may not delete the experiment (403) nor move the alias (403)"
secrets_now=()
for name in postgres_password mlflow_admin_password mlflow_trainer_password mlflow_api_password \
    admin_token events_token redis_password db_mlflow_password db_optuna_password db_lock_password; do
  secrets_now+=("$(secret "$name")")
done
containers=$(compose ps -aq)
inspected=$(docker inspect $containers)
processes=$(for c in $containers; do docker top "$c" -eo args 2>/dev/null || true; done)
for value in "${secrets_now[@]}"; do
  [ "${#value}" -ge 16 ] || fail "a secret of ${#value} characters"
  ! grep -qF -- "$value" <<<"$inspected" || fail "a secret is in docker inspect"
  ! grep -qF -- "$value" <<<"$processes" || fail "a secret is on a process's command line"
done
say "  ${#secrets_now[@]} generated secrets, none in docker inspect or on a command line"
api_log=$(compose logs --no-color api 2>&1)
grep -q "serving flight-delay" <<<"$api_log" || grep -qi "serving .*v[0-9]" <<<"$api_log" \
  || fail "the model's load is not in docker compose logs api"
say "  docker compose logs api: $(grep -m1 -o 'serving .*' <<<"$api_log" | cut -c1-100)"
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

# The edge sends to every replica of the API (Docker's DNS), each once its readiness check passes
compose up -d --no-recreate --scale api=2 api >/dev/null 2>&1 || fail "--scale api=2"
edge_up() {  # the scoring backend's servers the edge has UP, by its own /metrics
  compose exec -T api python -c '
import re, urllib.request
text = urllib.request.urlopen("http://edge:8405/metrics", timeout=5).read().decode()
print(len(re.findall(r"haproxy_server_status\{proxy=\"scoring\",server=\"api\d+\",state=\"UP\"\} 1", text)))'
}
two_up() { [ "$(edge_up)" = 2 ]; }
wait_for 180 two_up || fail "the edge has $(edge_up) API replicas UP, not 2"
codes=$(for _ in $(seq 40); do
  curl -s -o /dev/null -w '%{http_code}\n' "$API/predict" -H 'Content-Type: application/json' -d "$flight"
done | sort | uniq -c | tr -s ' \n' ' ')
[ "$(echo $codes)" = "40 200" ] || fail "through the edge to two replicas: $codes"
say "two API replicas behind the edge, both UP at its check; 40 predictions through it: $(echo $codes)"

compose down -v --remove-orphans >/dev/null
left=$(docker volume ls -q --filter label=com.docker.compose.project="$PROJECT" | wc -l)
[ "$left" -eq 0 ] || fail "$left volumes left behind"
say "down -v: nothing left behind"
echo "SMOKE OK first_prediction_s=$first_prediction retrain_done_s=$retrained"
