#!/usr/bin/env bash
# Faults injected into the running stack while a client sends /predict without a pause; each
# fault ends in one line `CHAOS fault=... requests=N failed=M ...` (benchmarks/RESULTS.md):
#   1. `docker compose restart postgres` during a retrain, during a tuning study and during a
#      promotion: each completes or fails cleanly, and the next try completes;
#   2. `docker compose stop mlflow` for a minute while a scheduler ticks: the API stays ready
#      on its model, the tick fails cleanly, the next one after MLflow returns succeeds;
#   3. a full data volume (a tmpfs filled with ballast): the tick fails cleanly, the data
#      before it stays, and once space is freed the next tick succeeds;
#   4. `docker compose down` then `up` (no -v): registry, champion, study and data are still
#      there, and the API serves the same version.
# From a clean state to a clean state (`down -v` at the end), like infra/smoke.sh.
# CHAOS_FAULTS picks some (default: "postgres mlflow full downup", in that order).
# COMPOSE_PROJECT_NAME and MLOPS_VERSION keep a test stack apart.
set -euo pipefail
cd "$(dirname "$0")/.."
. infra/smoke_lib.sh
API=${API:-http://127.0.0.1:${API_PORT:-8000}}
PROJECT=${COMPOSE_PROJECT_NAME:-mlops-flights}
export RETRAIN_CRON="0 0 1 1 *"  # the scheduler ticks only when this script asks
work=$(mktemp -d)
compose() { docker compose "$@"; }
say() { printf '[chaos %4ds] %s\n' "$((SECONDS - start))" "$*"; }
fail() { say "FAILED: $*"; compose ps -a; compose logs --tail 30 api scheduler mlflow || true; exit 1; }
cleanup() { touch "$work/stop"; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
want() { [[ " ${CHAOS_FAULTS:-postgres mlflow full downup} " == *" $1 "* ]]; }

# The client: one /predict every 50 ms, each answer's time and status (0: no answer) logged
load() {
  python3 - "$API" "$work/requests" "$work/stop" <<'PY'
import json, os, sys, time, urllib.error, urllib.request
api, log, stop = sys.argv[1:]
body = json.dumps({"flights": [{"carrier": "UA", "flight": 1545, "tailnum": "N14228",
    "origin": "EWR", "dest": "IAH", "scheduled_departure": "2013-12-01T05:15:00"}]}).encode()
with open(log, "a", buffering=1) as out:
    while not os.path.exists(stop):
        request = urllib.request.Request(f"{api}/predict", body, {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                status = answer.status
        except urllib.error.HTTPError as error:
            status = error.code
        except OSError:
            status = 0
        out.write(f"{time.time():.3f} {status}\n")
        time.sleep(0.05)
PY
}
now() { date +%s.%N; }
requests_since() {  # requests_since <epoch>: "requests=N failed=M"
  awk -v t="$1" '$1 >= t { n++; if ($2 != 200) f++ } END { printf "requests=%d failed=%d", n, f }' \
    "$work/requests"
}
tick() {  # tick <log>: one scheduler tick (the gate lowered, so a retrain promotes); its outcome
  compose exec -T -e MLOPS_GATE__MIN_AUC_GAIN=-1 scheduler mlops schedule --once >"$1" 2>&1 || true
  grep -o "tick: [a-z ]*" "$1" | tail -1 | cut -c7- || echo "no outcome"
}
champion() { curl -sf "$API/model" | json 'd["version"]'; }
bronze_months() { compose exec -T scheduler sh -c 'ls -d /data/data/bronze/flights/month=* | wc -l'; }

compose down -v --remove-orphans >/dev/null 2>&1 || true
compose build --quiet
start=$SECONDS
say "up (clean state)"
compose up -d >/dev/null 2>&1 || fail "up"
wait_for 1200 curl -sf "$API/v2/health/ready" || fail "the API never became ready"
say "API ready on v$(champion)"
load &

# 1. PostgreSQL restarted during a retrain, a study and a promotion
want postgres && for phase in retrain study promotion; do
  t=$(now); before=$(champion)
  case $phase in
    retrain) tick "$work/$phase.log" >"$work/$phase.outcome" & delay=20 ;;
    study) compose exec -T scheduler mlops tune --trials "${CHAOS_TRIALS:-3}" >"$work/$phase.log" 2>&1 &
      delay=15 ;;
    promotion) compose exec -T -e MLOPS_GATE__MIN_AUC_GAIN=-1 scheduler mlops promote \
      >"$work/$phase.log" 2>&1 & delay=4 ;;
  esac
  job=$!
  sleep "$delay"
  compose restart postgres >/dev/null 2>&1
  code=0; wait $job || code=$?
  case $phase in
    retrain) first=$(cat "$work/$phase.outcome") ;;
    *) first="exit $code" ;;
  esac
  again="not needed"
  # a retrain that did not reach its gate ("failed", "lock lost") is retried by the next tick
  if { [ "$phase" = retrain ] && [ "$first" != promoted ] && [ "$first" != "kept the champion" ]; } \
    || { [ "$phase" != retrain ] && [ "$code" != 0 ]; }; then
    case $phase in
      retrain) again=$(tick "$work/$phase-again.log") ;;
      study) compose exec -T scheduler mlops tune --trials "${CHAOS_TRIALS:-3}" >"$work/$phase-again.log" 2>&1 \
        && again="exit 0" || again="exit $?" ;;
      promotion) compose exec -T -e MLOPS_GATE__MIN_AUC_GAIN=-1 scheduler mlops promote \
        >"$work/$phase-again.log" 2>&1 && again="exit 0" || again="exit $?" ;;
    esac
  fi
  ready=$(curl -s -o /dev/null -w '%{http_code}' "$API/v2/health/ready")
  echo "CHAOS fault=postgres-restart-during-$phase $(requests_since "$t") first_try=\"$first\" next_try=\"$again\" api_ready=$ready champion=v$before->v$(champion)"
  tail -3 "$work/$phase.log" | sed 's/^/    /'
done

# 2. MLflow stopped for a minute while the scheduler ticks
if want mlflow; then
t=$(now); before=$(champion)
compose stop mlflow >/dev/null 2>&1
first=$(tick "$work/mlflow.log")
not_ready=0
for _ in $(seq 25); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "$API/v2/health/ready")" = 200 ] || not_ready=$((not_ready + 1))
  sleep 2
done
compose start mlflow >/dev/null 2>&1
wait_for 180 sh -c "docker inspect -f '{{.State.Health.Status}}' \$(docker compose ps -q mlflow) | grep -q healthy" \
  || fail "MLflow did not come back"
again=$(tick "$work/mlflow-again.log")
echo "CHAOS fault=mlflow-stopped-60s $(requests_since "$t") tick_while_down=\"$first\" tick_after=\"$again\" api_not_ready_checks=$not_ready/25 champion=v$before->v$(champion)"
fi

# 3. A full data volume: the scheduler's data copied onto a tmpfs, filled with ballast
if want full; then
t=$(now)
image=$(docker inspect -f '{{.Config.Image}}' "$(compose ps -q scheduler)")
network=$(docker inspect -f '{{range $k, $v := .NetworkSettings.Networks}}{{$k}}{{end}}' "$(compose ps -q scheduler)")
used_mb=$(compose exec -T scheduler du -sm /data | cut -f1)
size_mb=$((used_mb + 512))
env_args=()
for v in MLOPS_HOME=/data MLFLOW_TRACKING_URI=http://mlflow:5000 MLFLOW_TRACKING_USERNAME=trainer \
    MLFLOW_TRACKING_PASSWORD_FILE=/run/secrets/mlflow_password \
    MLOPS_OPTUNA_STORAGE_FILE=/run/secrets/optuna_storage MLOPS_LOCK_URL_FILE=/run/secrets/lock_url \
    MLOPS_TUNE__HEARTBEAT_INTERVAL=10 MLOPS_TUNE__GRACE_PERIOD=30 "MLOPS_FIT__EPOCHS=${MLOPS_FIT__EPOCHS:-6}" \
    MLOPS_GATE__MIN_AUC_GAIN=-1; do
  env_args+=(-e "$v")
done
docker run --rm --network "$network" --tmpfs "/data:size=${size_mb}m,uid=10001,gid=10001" \
  -v "${PROJECT}_data:/seed:ro" -v "${PROJECT}_secrets-trainer:/run/secrets:ro" "${env_args[@]}" \
  --entrypoint bash "$image" -c '
    set -u
    cp -a /seed/. /data/
    months() { ls -d /data/data/bronze/flights/month=* | wc -l; }
    sums() { find /data/data/bronze /data/data/feature_spec.json -type f -exec sha256sum {} + | sort | sha256sum; }
    before_months=$(months); before_sums=$(sums)
    fallocate -l "$(($(df -B1 --output=avail /data | tail -1) - 4096))" /data/ballast 2>/dev/null \
      || dd if=/dev/zero of=/data/ballast bs=1M 2>/dev/null || true
    full=$(mlops schedule --once 2>&1 | grep -o "tick: [a-z ]*" | tail -1)
    after_sums=$(sums)
    leftovers=$(find /data -name ".staging-*" -o -name "*.tmp" | wc -l)
    rm -f /data/ballast
    freed=$(mlops schedule --once 2>&1 | grep -o "tick: [a-z ]*" | tail -1)
    echo "full=\"${full:-no outcome}\" data_kept=$([ "$before_sums" = "$after_sums" ] && echo yes || echo NO) leftovers_when_full=$leftovers after_freeing=\"${freed:-no outcome}\" months=$before_months->$(months)"
  ' >"$work/full.log" 2>&1 || true
echo "CHAOS fault=data-volume-full $(requests_since "$t") $(tail -1 "$work/full.log") api_ready=$(curl -s -o /dev/null -w '%{http_code}' "$API/v2/health/ready")"
fi

# 4. down, then up (no -v): everything is still there
if want downup; then
# the registry's champion, once the API has caught up with a promotion made just before
printf 'user = "admin:%s"\n' "$(compose run --rm --no-deps -T init get mlflow_admin_password | tr -d '\r')" \
  > "$work/admin"
registry() {
  curl -sf -K "$work/admin" "http://127.0.0.1:${MLFLOW_PORT:-5000}/api/2.0/mlflow/registered-models/alias?name=flight-delay&alias=champion" \
    | json 'd["model_version"]["version"]'
}
wait_for 120 sh -c "[ \"\$(curl -sf $API/model | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"version\"])')\" = \"$(registry)\" ]" \
  || fail "the API does not serve the registry's champion v$(registry)"
before=$(champion); months=$(bronze_months)
trials=$(compose exec -T postgres psql -U "${POSTGRES_USER:-mlops}" -d optuna -At -c "select count(*) from trials")
touch "$work/stop"; wait || true; rm -f "$work/stop"
compose down >/dev/null 2>&1
compose up -d >/dev/null 2>&1 || fail "up after down"
wait_for 600 curl -sf "$API/v2/health/ready" || fail "the API was not ready after down/up"
after=$(champion)
trials_after=$(compose exec -T postgres psql -U "${POSTGRES_USER:-mlops}" -d optuna -At -c "select count(*) from trials")
trainer=$(compose logs --no-color trainer 2>&1 | grep -c "already has a" || true)
echo "CHAOS fault=down-then-up champion=v$before->v$after bronze_months=$months->$(bronze_months) trials=$trials->$trials_after trainer_skipped=$trainer"
[ "$before" = "$after" ] || fail "the API serves v$after after down/up, not v$before"
fi

compose down -v --remove-orphans >/dev/null 2>&1
say "down -v: done"
