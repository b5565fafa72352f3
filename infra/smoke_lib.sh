# Helpers the stack's scripts share (infra/smoke.sh, chaos.sh, smoke_monitoring.sh): source it.
wait_for() {  # wait_for <seconds> <command...>: until the command succeeds, at most that long
  local limit=$1; shift
  local until=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$until" ] || return 1
    sleep 2
  done
}
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }  # json <expr of d>
