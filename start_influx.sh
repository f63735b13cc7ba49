#!/bin/sh
# Start a local metrics server to try packet-flow's InfluxDB output, and print the flags.
#
#   ./start_influx.sh          start (or reuse) a server
#   ./start_influx.sh stop     stop what this script started
#
# Docker engine running -> InfluxDB 2 in a container (org, bucket and a random token are
# created on first start; the token goes to a file, never onto the command line).
# Otherwise -> VictoriaMetrics (Debian package `victoria-metrics`), which accepts the
# InfluxDB line protocol and ignores the token.
# Either way the token is in $PF_STATE_DIR/token, so the flags to use are the same.
# Settings: PF_STATE_DIR (default ./.packet-flow-influx; it holds the token: keep it out of
# git), PF_PORT (default 8086), PF_ORG (packet-flow), PF_BUCKET (packet_flow).
set -eu

STATE=${PF_STATE_DIR:-"$(pwd)/.packet-flow-influx"}
PORT=${PF_PORT:-8086}
ORG=${PF_ORG:-packet-flow}
BUCKET=${PF_BUCKET:-packet_flow}
NAME=packet-flow-influx
mkdir -p "$STATE"
chmod 700 "$STATE"
STATE=$(cd "$STATE" && pwd)
SELF="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
# The stop command, as it works from any folder.
STOP="PF_STATE_DIR='$STATE' '$SELF' stop"

vm_running() {  # the VictoriaMetrics this script started, still alive
    [ -f "$STATE/vm.pid" ] && kill -0 "$(cat "$STATE/vm.pid")" 2>/dev/null \
        && grep -q victoria "/proc/$(cat "$STATE/vm.pid")/comm" 2>/dev/null
}

# A running server keeps the port it was started on.
if vm_running && [ -f "$STATE/port" ]; then PORT=$(cat "$STATE/port"); fi
URL="http://127.0.0.1:$PORT"

have_docker() { command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; }

port_busy() {
    python3 -c "import socket,sys; s=socket.socket(); s.settimeout(0.3); sys.exit(0 if s.connect_ex(('127.0.0.1', $PORT)) == 0 else 1)"
}

wait_health() {  # $1 = pid to watch, or empty
    i=0
    while [ $i -lt 300 ]; do
        if [ -n "$1" ] && ! kill -0 "$1" 2>/dev/null; then
            echo "the server exited; see $STATE/server.log" >&2; exit 1
        fi
        if python3 -c "import urllib.request,sys; urllib.request.urlopen('$URL/health', timeout=1)" 2>/dev/null; then
            return 0
        fi
        i=$((i + 1)); sleep 0.2
    done
    echo "no answer from $URL/health after 60 s" >&2; exit 1
}

if [ "${1:-}" = stop ]; then
    stopped=""
    if vm_running; then
        pid=$(cat "$STATE/vm.pid")
        kill "$pid"
        i=0
        while kill -0 "$pid" 2>/dev/null && [ $i -lt 100 ]; do i=$((i + 1)); sleep 0.1; done
        echo "VictoriaMetrics stopped (data kept in $STATE/vm-data)"; stopped=1
    fi
    rm -f "$STATE/vm.pid"
    if have_docker && docker inspect "$NAME" >/dev/null 2>&1; then
        docker stop "$NAME" >/dev/null; stopped=1
        echo "container $NAME stopped (docker rm $NAME to remove it)"
    fi
    [ -n "$stopped" ] || echo "nothing to stop (no server started from $STATE)"
    exit 0
fi

if have_docker; then
    if docker inspect "$NAME" >/dev/null 2>&1; then
        docker start "$NAME" >/dev/null
    else
        port_busy && { echo "port $PORT is in use; set PF_PORT" >&2; exit 1; }
        umask 077
        python3 -c "import secrets; print(secrets.token_urlsafe(32))" > "$STATE/token"
        python3 -c "import secrets; print(secrets.token_urlsafe(16))" > "$STATE/admin-password"
        docker run -d --name "$NAME" -p "127.0.0.1:$PORT:8086" \
            -v packet-flow-influx-data:/var/lib/influxdb2 \
            -v packet-flow-influx-config:/etc/influxdb2 \
            -e DOCKER_INFLUXDB_INIT_MODE=setup \
            -e DOCKER_INFLUXDB_INIT_USERNAME=packet-flow \
            -e DOCKER_INFLUXDB_INIT_PASSWORD="$(cat "$STATE/admin-password")" \
            -e DOCKER_INFLUXDB_INIT_ORG="$ORG" \
            -e DOCKER_INFLUXDB_INIT_BUCKET="$BUCKET" \
            -e DOCKER_INFLUXDB_INIT_ADMIN_TOKEN="$(cat "$STATE/token")" \
            influxdb:2 >/dev/null
    fi
    wait_health ""
    echo "InfluxDB 2 is running in container $NAME at $URL (org $ORG, bucket $BUCKET)."
    echo "UI login: packet-flow / $(cat "$STATE/admin-password" 2>/dev/null || echo '(see the container setup)')"
    echo "Use:"
    echo "  packet-flow -m receiver --influx-url $URL --influx-org $ORG --database $BUCKET --token-file $STATE/token"
    echo "Stop it with: $STOP"
    exit 0
fi

if command -v victoria-metrics >/dev/null 2>&1; then
    if vm_running; then
        echo "VictoriaMetrics already running (pid $(cat "$STATE/vm.pid"))"
    else
        port_busy && { echo "port $PORT is in use; set PF_PORT" >&2; exit 1; }
        echo "$PORT" > "$STATE/port"
        # VictoriaMetrics ignores the token; a file all the same, so the flags are the same.
        [ -s "$STATE/token" ] || (umask 077; echo unused > "$STATE/token")
        nohup victoria-metrics -storageDataPath="$STATE/vm-data" -httpListenAddr="127.0.0.1:$PORT" \
            -retentionPeriod=100y -loggerLevel=WARN > "$STATE/server.log" 2>&1 &
        echo $! > "$STATE/vm.pid"
        wait_health "$(cat "$STATE/vm.pid")"
    fi
    echo "VictoriaMetrics is running at $URL (pid $(cat "$STATE/vm.pid"))."
    echo "It ignores org, bucket and token (packet-flow still wants a token: $STATE/token)."
    echo "Query it at $URL/vmui (metric names: packet_flow_received, packet_flow_owd_p99_us, ...)."
    echo "Use:"
    echo "  packet-flow -m receiver --influx-url $URL --influx-org $ORG --database $BUCKET --token-file $STATE/token"
    echo "Stop it with: $STOP"
    exit 0
fi

echo "Neither a running Docker engine nor victoria-metrics was found." >&2
echo "Install one: apt-get install victoria-metrics   (or start Docker and run this again)" >&2
exit 1
