#!/usr/bin/env bash
# End-to-end test of the compose profile "alerting", every image built here (nothing
# pulled): Redis + 1 agent + 1 police reading docker/rules.toml + Alertmanager; checks that
# the police's alerts arrive in Alertmanager (GET /api/v2/alerts on the loopback port) with
# the labels of the mapping. Tears everything down (down -v) in every case.
set -euo pipefail
cd "$(dirname "$0")/.."

started=$(date +%s)
step() { echo "== [$(( $(date +%s) - started ))s] $*"; }
fail() { echo "FAILED: $*" >&2; exit 1; }

project="lsalert$$"
export COMPOSE_PROJECT_NAME="$project"
export REDIS_IMAGE=logsentinel-redis:local
export ALERTMANAGER_IMAGE=logsentinel-alertmanager:local
export LOGSENTINEL_IMAGE=logsentinel
export LOGSENTINEL_TAG
LOGSENTINEL_TAG=$(git rev-parse --short HEAD 2>/dev/null || echo latest)
export COMPOSE_PROFILES=alerting POLICE_ENV_FILE=docker/alerting.env AGENT_RATE=200
export ALERTMANAGER_PORT
ALERTMANAGER_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
compose() { docker-compose "$@"; }
cleanup() {
  if [ "${passed:-0}" != 1 ]; then
    compose logs --tail 30 police alertmanager 2>/dev/null | sed 's/^/   /' || true
  fi
  step "tearing down"
  compose down -v --remove-orphans >/dev/null 2>&1 || true
}
trap cleanup EXIT

alerts() { curl -s -m 5 "http://127.0.0.1:$ALERTMANAGER_PORT/api/v2/alerts" || true; }
wait_for() { # wait_for <seconds> <description> <command...>
  local deadline=$(( $(date +%s) + $1 )) description=$2
  shift 2
  until "$@"; do
    [ "$(date +%s)" -lt "$deadline" ] || fail "timed out waiting for $description"
    sleep 2
  done
}

step "images (built offline unless already there)"
if ! docker image inspect "logsentinel:$LOGSENTINEL_TAG" logsentinel-redis:local logsentinel-alertmanager:local >/dev/null 2>&1; then
  docker/build-offline.sh
fi
docker image inspect "logsentinel:$LOGSENTINEL_TAG" >/dev/null 2>&1 || LOGSENTINEL_TAG=latest

step "starting redis-store, 1 agent, 1 police with docker/rules.toml, alertmanager on 127.0.0.1:$ALERTMANAGER_PORT"
compose up -d --scale log-agent=1 --scale police=1
wait_for 60 "alertmanager answering" bash -c "curl -sf -m 5 http://127.0.0.1:$ALERTMANAGER_PORT/-/ready >/dev/null"

step "waiting for an alert of rule critical-per-service in Alertmanager"
has_alert() { alerts | grep -q '"alertname":"critical-per-service"'; }
wait_for 120 "the alert in Alertmanager" has_alert
body=$(alerts)
python3 - "$body" <<'PY' || fail "the alert lacks the expected labels: $body"
import json, sys
alerts = [a for a in json.loads(sys.argv[1]) if a["labels"]["alertname"] == "critical-per-service"]
labels = alerts[0]["labels"]
assert labels["severity"] == "critical", labels
assert labels["source"] == "logsentinel", labels
assert labels.get("service"), labels
assert alerts[0]["status"]["state"] == "active", alerts[0]
assert alerts[0]["annotations"]["alert_id"].startswith("critical-per-service/"), alerts[0]
print("   %d critical-per-service alerts active, e.g. labels %s" % (len(alerts), json.dumps(labels, sort_keys=True)))
PY

step "the README command: amtool inside the alertmanager container"
compose exec -T alertmanager amtool --alertmanager.url=http://localhost:9093 alert query alertname=critical-per-service \
  | sed 's/^/   /' | head -5
passed=1
step "passed in $(( $(date +%s) - started )) s"
