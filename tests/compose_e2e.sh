#!/usr/bin/env bash
# End-to-end test of the docker-compose stack, every image built here (nothing pulled):
# Redis + 5 agents (each with a disk spool) + 2 police; kill a police; restart Redis; cut an
# agent off the network for 20 s; scale police 2 → 4 → 1; then check that every CRITICAL event raised exactly one
# alert and that no consumer is left with pending entries. Prints each step with its
# figures; exits non-zero on any failure; tears everything down (down -v) in every case.
set -euo pipefail
cd "$(dirname "$0")/.."

started=$(date +%s)
step() { echo "== [$(( $(date +%s) - started ))s] $*"; }
fail() { echo "FAILED: $*" >&2; exit 1; }

project="lse2e$$"
export COMPOSE_PROJECT_NAME="$project"
export REDIS_IMAGE=logsentinel-redis:local
export LOGSENTINEL_IMAGE=logsentinel
export LOGSENTINEL_TAG
LOGSENTINEL_TAG=$(git rev-parse --short HEAD 2>/dev/null || echo latest)
export AGENT_RATE=200 POLICE_CLAIM_IDLE_MS=3000 POLICE_CONSUMER_IDLE_REMOVE_MS=5000
compose() { docker-compose "$@"; }
cleanup() {
  step "tearing down"
  compose down -v --remove-orphans >/dev/null 2>&1 || true
}
trap cleanup EXIT

redis() { compose exec -T redis-store redis-cli "$@" | tr -d '\r'; }
wait_for() { # wait_for <seconds> <description> <command...>
  local deadline=$(( $(date +%s) + $1 )) description=$2
  shift 2
  until "$@"; do
    [ "$(date +%s)" -lt "$deadline" ] || fail "timed out waiting for $description"
    sleep 1
  done
}
processed() { redis HGET logsentinel:logs:stats events; }
stream_added() { redis XINFO STREAM logsentinel:logs | awk 'prev == "entries-added" { print; exit } { prev = $0 }'; }
greater() { [ "${1:-0}" -gt "${2:-0}" ]; }
lag() { redis XINFO GROUPS logsentinel:logs | awk 'prev == "lag" { print; exit } { prev = $0 }'; }

step "building images (offline)"
docker/build-offline.sh
LOGSENTINEL_TAG=$(git rev-parse --short HEAD 2>/dev/null || echo latest)
docker image inspect "logsentinel:$LOGSENTINEL_TAG" >/dev/null || LOGSENTINEL_TAG=latest

step "starting redis-store, 5 agents, 2 police"
compose up -d --scale log-agent=5 --scale police=2
wait_for 60 "events processed and alerts raised" bash -c \
  "[ \"\$(docker-compose exec -T redis-store redis-cli HGET logsentinel:logs:stats events | tr -d '\r')\" -gt 2000 ] \
   && [ \"\$(docker-compose exec -T redis-store redis-cli XLEN logsentinel:alerts | tr -d '\r')\" -gt 0 ]"
echo "   processed $(processed), alerts $(redis XLEN logsentinel:alerts), agents resolved redis-store by name"

step "probes: every agent and police container healthy (healthcheck --url of the admin /readyz)"
all_healthy() {
  for container in $(compose ps -q log-agent police); do
    [ "$(docker inspect -f '{{.State.Health.Status}}' "$container")" = healthy ] || return 1
  done
}
wait_for 90 "every agent and police healthy" all_healthy
compose exec -T police /logsentinel healthcheck --url http://127.0.0.1:9464/metrics \
  || fail "the police's /metrics does not answer"
echo "   $(compose ps -q log-agent police | wc -l) containers healthy; the police's /metrics answers"

step "docker kill of a police mid-stream"
victim=$(compose ps -q police | awk 'NR == 1')
victim_consumer="$(docker inspect -f '{{.Config.Hostname}}' "$victim")-1"
docker kill "$victim" >/dev/null
before=$(processed)
wait_for 60 "the other police to take over" bash -c \
  "[ \"\$(docker-compose exec -T redis-store redis-cli HGET logsentinel:logs:stats events | tr -d '\r')\" -gt $(( before + 2000 )) ]"
wait_for 60 "the killed police's entries claimed" bash -c \
  "! docker-compose exec -T redis-store redis-cli XPENDING logsentinel:logs police - + 10 $victim_consumer | grep -q ."
echo "   processed $(processed) after the kill; nothing pending on $victim_consumer"
compose up -d --scale log-agent=5 --scale police=2 --no-recreate >/dev/null 2>&1

step "stopping and restarting redis-store (AOF on its volume)"
added_before=$(stream_added)
compose stop redis-store >/dev/null 2>&1
sleep 5
compose start redis-store >/dev/null 2>&1
wait_for 60 "redis-store healthy" bash -c "docker-compose exec -T redis-store redis-cli ping 2>/dev/null | grep -q PONG"
added_after_restart=$(stream_added)
greater "$((added_after_restart + 1))" "$added_before" || fail "entries lost over the restart: $added_before before, $added_after_restart after"
wait_for 60 "agents to resume" bash -c \
  "[ \"\$(docker-compose exec -T redis-store redis-cli XINFO STREAM logsentinel:logs | tr -d '\r' | awk 'prev == \"entries-added\" { print; exit } { prev = \$0 }')\" -gt $(( added_after_restart + 500 )) ]"
echo "   entries added: $added_before before the stop, $added_after_restart after the restart, $(stream_added) now"

step "cutting an agent off sentinel-net for 20 s"
agent=$(compose ps -q log-agent | awk 'NR == 1')
agent_id=$(docker inspect -f '{{.Config.Hostname}}' "$agent")
docker network disconnect "${project}_sentinel-net" "$agent"
sleep 20
docker network connect "${project}_sentinel-net" "$agent"
wait_for 90 "the cut-off agent's events in the stream again" bash -c \
  "docker-compose exec -T redis-store redis-cli XREVRANGE logsentinel:logs + - COUNT 300 | grep -q '\"id\":\"$agent_id:'"
echo "   agent $agent_id resumed; outage lines in its log: $(docker logs "$agent" 2>&1 | grep -c 'redis unreachable' || true)"
# its spool is replayed while it runs (after an outage the replay starts once its retry
# backoff allows): the stop below then has only the last batches to flush
agent_ip=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$agent")
spool_bytes() {
  curl -s --max-time 5 "http://$agent_ip:9465/metrics" | awk '$1 == "logsentinel_agent_spool_bytes" { print $2 }'
}
wait_for 180 "the cut-off agent to replay its spool" bash -c "[ \"\$(curl -s --max-time 5 http://$agent_ip:9465/metrics | awk '\$1 == \"logsentinel_agent_spool_bytes\" { print \$2 }')\" = 0 ]"
echo "   its spool replayed ($(spool_bytes) bytes left)"

step "scaling police 2 → 4 → 1"
compose up -d --scale log-agent=5 --scale police=4 --no-recreate >/dev/null 2>&1
sleep 5
compose up -d --scale log-agent=5 --scale police=1 --no-recreate >/dev/null 2>&1
echo "   police running: $(compose ps -q police | wc -l)"

step "stopping the agents (they flush and print their summaries)"
compose stop -t 30 log-agent >/dev/null 2>&1
sent=0 critical=0 spooled=0
for container in $(compose ps -a -q log-agent); do
  summary=$(docker logs "$container" 2>/dev/null)
  events=$(echo "$summary" | awk '$1 == "events" { n = $2 } END { print n + 0 }')
  crit=$(echo "$summary" | awk '$1 == "CRITICAL" { n = $2 } END { print n + 0 }')
  unsent=$(echo "$summary" | awk '$1 == "UNSENT" { n = $2 } END { print n + 0 }')
  spool_left=$(echo "$summary" | awk '$1 == "in" && $2 == "spool" { n = $3 } END { print n + 0 }')
  agent_spooled=$(echo "$summary" | awk '$1 == "spooled" { n = $2 } END { print n + 0 }')
  [ "$unsent" -eq 0 ] || fail "agent $container could not deliver $unsent events"
  [ "$spool_left" -eq 0 ] || fail "agent $container left $spool_left bytes in its spool"
  sent=$(( sent + events )); critical=$(( critical + crit )); spooled=$(( spooled + agent_spooled ))
done
echo "   agents sent $sent events, $critical CRITICAL; $spooled went through their disk spools"
[ "$spooled" -gt 0 ] || fail "the Redis restart and the network cut spooled nothing"
[ "$sent" -gt 0 ] || fail "no agent summary found"

step "waiting for the police to drain"
wait_for 120 "every event processed" bash -c \
  "[ \"\$(docker-compose exec -T redis-store redis-cli HGET logsentinel:logs:stats events | tr -d '\r')\" -ge $sent ]"
alerts=$(redis XLEN logsentinel:alerts)
unique_alerts=$(redis XRANGE logsentinel:alerts - + | awk 'prev == "id" { print } { prev = $0 }' | sort -u | wc -l)
echo "   processed $(processed) (resends after the Redis restart may count twice), alerts $alerts, unique $unique_alerts"
[ "$alerts" -eq "$unique_alerts" ] || fail "duplicate alerts: $alerts alerts, $unique_alerts unique"
[ "$alerts" -eq "$critical" ] || fail "$critical CRITICAL events sent but $alerts alerts"

step "no consumer left behind with pending entries"
wait_for 60 "pending entries of gone consumers claimed" bash -c \
  "[ \"\$(docker-compose exec -T redis-store redis-cli XPENDING logsentinel:logs police | awk 'NR == 1' | tr -d '\r')\" -eq 0 ]"
redis XINFO CONSUMERS logsentinel:logs police | paste - - - - - - | sed 's/^/   /'

step "the README workflow: status from a one-off container"
# -T: CI gives no terminal; output captured, not piped into grep -q (pipefail + SIGPIPE).
status_text=$(compose run --rm -T police status) || fail "status exited with an error"
echo "$status_text" | sed 's/^/   /'
grep -q "group police" <<<"$status_text" || fail "status did not show the group"
status_json=$(docker run --rm --network "${project}_sentinel-net" -e LOGSENTINEL_REDIS_URL=redis://redis-store:6379 \
  "logsentinel:$LOGSENTINEL_TAG" status --json) || fail "one-off docker run on sentinel-net failed"
grep -q '"groups"' <<<"$status_json" || fail "one-off docker run printed no groups: $status_json"

step "police stopped: the lag grows; started again: it drains to 0"
compose start log-agent >/dev/null 2>&1
compose stop police >/dev/null 2>&1
first_lag=$(lag)
wait_for 60 "the lag to grow" bash -c "[ \"\$(docker-compose exec -T redis-store redis-cli XINFO GROUPS logsentinel:logs | tr -d '\r' | awk 'prev == \"lag\" { print; exit } { prev = \$0 }')\" -gt $(( first_lag + 1000 )) ]"
grown_lag=$(lag)
compose start police >/dev/null 2>&1
compose stop -t 30 log-agent >/dev/null 2>&1
wait_for 120 "the backlog drained" bash -c "[ \"\$(docker-compose exec -T redis-store redis-cli XINFO GROUPS logsentinel:logs | tr -d '\r' | awk 'prev == \"lag\" { print; exit } { prev = \$0 }')\" -eq 0 ]"
echo "   lag $first_lag when the police stopped, $grown_lag while it was down, $(lag) after it restarted"

step "list mode: AGENT_SINK=list POLICE_SOURCE=list"
AGENT_SINK=list POLICE_SOURCE=list compose up -d --scale log-agent=2 --scale police=1 >/dev/null 2>&1
wait_for 60 "list items processed" bash -c \
  "[ \"\$(docker-compose exec -T redis-store redis-cli HGET log_queue:stats events | tr -d '\r')\" -gt 500 ]"
echo "   LLEN log_queue $(redis LLEN log_queue), processed from the list $(redis HGET log_queue:stats events)"

docker image ls --format '   image {{.Repository}}:{{.Tag}} {{.Size}}' | grep -E 'logsentinel(-redis)?:' | sort -u
step "passed in $(( $(date +%s) - started )) s"
