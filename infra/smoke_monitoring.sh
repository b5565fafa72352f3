#!/usr/bin/env bash
# The monitoring loop in a real Docker engine, no person involved: drift -> alert -> retrain
# -> gate -> the API.
#   up with --profile monitoring -> every Prometheus target up -> a normal month (October)
#   replayed as live events raises no model alert -> a degraded one (November, every flight
#   an hour later than it was) raises a model alert -> Alertmanager -> the scheduler's
#   webhook starts one retrain (a second notification finds the cooldown) -> the gate decides
#   -> the API serves the result -> down -v.
# The rules are the repository's, with each `for` shortened to 1m in a copy (promtool tests
# the real durations: tests/infra/test_prometheus.py); the cron is moved out of the way so
# the only retrain is the alert's, and the monitor runs every minute. Prints the timings
# benchmarks/RESULTS.md records.
set -euo pipefail
cd "$(dirname "$0")/.."
. infra/smoke_lib.sh
export COMPOSE_PROJECT_NAME=${COMPOSE_PROJECT_NAME:-mlops-monitoring}
API=http://127.0.0.1:${API_PORT:-8000}
PROM=http://127.0.0.1:${PROMETHEUS_PORT:-9090}
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
mkdir "$work/rules"
for rules in infra/prometheus/rules/*.yml; do
  sed -E 's/^( +for:) .*/\1 1m/' "$rules" > "$work/rules/$(basename "$rules")"
done
cat > "$work/override.yml" <<EOF
services:
  prometheus:
    volumes:
      - $work/rules:/etc/prometheus/rules:ro
  scheduler:
    environment:
      RETRAIN_CRON: "0 0 1 1 *"
      MLOPS_SCHEDULE__MONITOR_CRON: "* * * * *"
EOF
compose() { docker compose -f docker-compose.yml -f "$work/override.yml" --profile monitoring "$@"; }
say() { printf '[monitoring %4ds] %s\n' "$((SECONDS - start))" "$*"; }
fail() {
  say "FAILED: $*"; compose ps || true
  compose logs --tail 60 api scheduler prometheus alertmanager || true
  exit 1
}
query() { curl -sf "$PROM/api/v1/query" --data-urlencode "query=$1"; }
firing() {  # the firing alerts that ask for a retrain, by name
  query 'ALERTS{alertstate="firing",action="retrain"}' \
    | json '",".join(sorted({r["metric"]["alertname"] for r in d["data"]["result"]}))'
}
replay() {  # replay <month> <late by, minutes>
  compose --profile replay run --rm -T -e REPLAY_SINCE="$1" -e REPLAY_UNTIL="$1" \
    -e REPLAY_LATE_BY="$2" replay
}

compose down -v --remove-orphans >/dev/null 2>&1 || true
compose build --quiet
start=$SECONDS
say "up with the monitoring profile (clean state)"
compose up -d
wait_for 2400 curl -sf "$API/v2/health/ready" || fail "the API never became ready"
version=$(curl -sf "$API/model" | json 'd["version"]')
say "API ready, v$version"
targets_up() {
  query 'up' | json 'all(r["value"][1] == "1" for r in d["data"]["result"]) and
    {r["metric"]["job"] for r in d["data"]["result"]} >= {"api", "edge", "scheduler", "sink", "prometheus"}' \
    | grep -q True
}
wait_for 120 targets_up || fail "Prometheus targets: $(query up)"
say "every Prometheus target up: $(query up | json '[r["metric"]["instance"] for r in d["data"]["result"]]')"

say "October replayed as live events (a normal month)"
replay 2013-10 0 > "$work/normal.log" 2>&1 || fail "the normal replay: $(tail -5 "$work/normal.log")"
grep "realized on" "$work/normal.log" | sed 's/^/    /'
sleep 150  # the rules' `for` (1m), an evaluation and a scrape
matured=$(query 'sum(mlops_realized_predictions{window="24h"})' | json 'd["data"]["result"][0]["value"][1]')
[ -z "$(firing)" ] || fail "a normal month raised $(firing)"
say "no model alert after a normal month ($matured predictions matured over the last 24 h)"
tracked() { compose logs scheduler | grep -q "monitor: tracked"; }
wait_for 120 tracked || fail "the scheduler's monitor never tracked the served version"
say "the scheduler's monitor: $(compose logs scheduler | grep -oE 'monitor: tracked.*' | tail -1)"

say "November replayed every flight an hour late (a degraded month)"
degraded=$SECONDS
replay 2013-11 60 > "$work/degraded.log" 2>&1 &
replaying=$!
alerted() { [ -n "$(firing)" ]; }
wait_for 1800 alerted || fail "no alert for a degraded month"
alerted=$((SECONDS - degraded))
say "alert after ${alerted}s: $(firing)"
started_retrain() { compose logs scheduler | grep -q "retrain (alert) started"; }
wait_for 600 started_retrain || fail "the scheduler never started the alert's retrain"
retrain_started=$((SECONDS - degraded))
say "the scheduler started a retrain ${retrain_started}s after the first degraded event"
decided() { compose logs scheduler | grep -q "retrain (alert): "; }
wait_for 2400 decided || fail "the alert's retrain never finished"
outcome=$(compose logs scheduler | grep -oE "retrain \(alert\): [a-z ]+" | tail -1)
decided_after=$((SECONDS - degraded))
say "$outcome after ${decided_after}s"
case "$outcome" in
  *promoted*)
    wait_for 300 sh -c "curl -sf $API/model | grep -qv '\"version\":\"$version\"'" \
      || fail "the API never served the new champion"
    say "the API serves v$(curl -sf "$API/model" | json 'd["version"]') (was v$version) after $((SECONDS - degraded))s" ;;
  *"kept the champion"*) say "the gate kept v$version: the API serves it still" ;;
  *) fail "the alert's retrain: $outcome" ;;
esac
# the challenger's run in MLflow says what started it
tagged=$(compose exec -T scheduler python -c "
from mlflow import MlflowClient
from mlops.settings import secrets_from_files
secrets_from_files()
client = MlflowClient()
experiment = client.get_experiment_by_name('flight-delay').experiment_id
runs = client.search_runs([experiment], \"tags.retrain_trigger = 'alert'\")
print(' '.join(r.data.tags.get('retrain_alerts', '?') for r in runs))")
[ -n "$tagged" ] || fail "no MLflow run tagged retrain_trigger=alert"
say "MLflow: the challenger's run is tagged retrain_trigger=alert, retrain_alerts=$tagged"
alert_runs() { query 'mlops_retrain_runs_total{trigger="alert"}' | json 'sum(float(r["value"][1]) for r in d["data"]["result"])'; }
one_run() { [ "$(alert_runs)" = "1.0" ]; }
wait_for 60 one_run || fail "$(alert_runs) alert retrains, not 1"
say "one alert retrain; notifications: $(query 'mlops_retrain_alerts_total' | json '{r["metric"]["verdict"]: r["value"][1] for r in d["data"]["result"]}')"
wait "$replaying" || fail "the degraded replay: $(tail -5 "$work/degraded.log")"
grep "realized on" "$work/degraded.log" | sed 's/^/    /'
compose stop api >/dev/null 2>&1
code=$(docker inspect -f '{{.State.ExitCode}}' "$(compose ps -aq api | head -1)")
[ "$code" = 0 ] || fail "the API exited with $code on SIGTERM, not 0"
say "the API stopped cleanly on SIGTERM (exit 0)"
compose --profile replay down -v --remove-orphans >/dev/null
say "down -v"
