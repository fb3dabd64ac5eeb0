#!/usr/bin/env bash
# Local service stack for recsys-worker: Apache Kafka (KRaft, single combined
# broker+controller node, from Maven Central jars) and Redis (Debian redis-server).
#
#   scripts/stack.sh start  [kafka|redis|all]   start (no-op if already running)
#   scripts/stack.sh stop   [kafka|redis|all] [--clean]   stop; --clean also deletes data
#   scripts/stack.sh status                      one line per service; exit 1 if any is down
#   scripts/stack.sh env                         print `export KEY=VALUE` lines
#
# State lives in ${STACK_DIR:-<repo>/.stack}: *.log, *.pid, kafka/ and redis/ data
# dirs, and `env` (plain KEY=VALUE lines: KAFKA_BROKER=host:port, REDIS_URL=redis://...).
#
# Knobs (environment): KAFKA_VERSION (default 4.1.1), KAFKA_CACHE (jar cache,
# default ~/.cache/recsys-worker/kafka-<ver>), KAFKA_PORT (19092), KAFKA_CONTROLLER_PORT
# (19093), REDIS_PORT (16379), KAFKA_HEAP_OPTS (-Xms256m -Xmx512m), STACK_TIMEOUT (90 s),
# PYTHON (used for the Kafka metadata probe; stdlib only), MVN (mvn), JAVA (java).
# A preferred port that is taken by something else is replaced by a free one; the
# chosen ports are remembered in .stack/<service>.port and reused.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STACK_DIR="${STACK_DIR:-.stack}"
case "$STACK_DIR" in /*) ;; *) STACK_DIR="$ROOT/$STACK_DIR" ;; esac

KAFKA_VERSION="${KAFKA_VERSION:-4.1.1}"
KAFKA_CACHE="${KAFKA_CACHE:-$HOME/.cache/recsys-worker/kafka-$KAFKA_VERSION}"
KAFKA_LIBS="$KAFKA_CACHE/libs"
KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms256m -Xmx512m}"
STACK_TIMEOUT="${STACK_TIMEOUT:-90}"
JAVA="${JAVA:-java}"
MVN="${MVN:-mvn}"
PYTHON="${PYTHON:-python3}"
HOST=127.0.0.1

log() { printf 'stack: %s\n' "$*" >&2; }
die() { printf 'stack: error: %s\n' "$*" >&2; exit 1; }

need() { # need CMD HINT
    command -v "$1" >/dev/null 2>&1 || die "$1 not found: $2"
}

# --------------------------------------------------------------------------- helpers

port_open() { # port_open PORT -> 0 if something accepts TCP connections on HOST:PORT
    (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null
}

pid_alive() { # pid_alive PIDFILE PATTERN -> 0 if the pid in PIDFILE runs a cmdline matching PATTERN
    local pid
    [[ -s "$1" ]] || return 1
    pid="$(<"$1")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    # Guard against pid reuse: the process must still be ours.
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$2"
}

pick_port() { # pick_port PREFERRED [AVOID] -> prints PREFERRED if free, else a free port
    local p="$1" avoid="${2:-}" i
    for ((i = 0; i < 200; i++)); do
        if [[ "$p" != "$avoid" ]] && ! port_open "$p"; then
            echo "$p"
            return 0
        fi
        p=$((p + 1))
    done
    die "no free port found near $1"
}

remembered_port() { # remembered_port FILE DEFAULT
    if [[ -s "$1" ]]; then cat "$1"; else echo "$2"; fi
}

wait_until() { # wait_until SECONDS CMD... -> 0 when CMD succeeds before the deadline
    local deadline=$((SECONDS + $1))
    shift
    while ((SECONDS < deadline)); do
        if "$@"; then return 0; fi
        sleep 0.25
    done
    "$@"
}

stop_pid() { # stop_pid NAME PIDFILE PATTERN
    local name="$1" pidfile="$2" pattern="$3" pid
    if ! pid_alive "$pidfile" "$pattern"; then
        rm -f "$pidfile"
        log "$name: not running"
        return 0
    fi
    pid="$(<"$pidfile")"
    kill -TERM "$pid" 2>/dev/null || true
    if ! wait_until 30 bash -c "! kill -0 $pid 2>/dev/null"; then
        log "$name: pid $pid did not exit after 30 s, sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        wait_until 5 bash -c "! kill -0 $pid 2>/dev/null" || die "$name: pid $pid survived SIGKILL"
    fi
    rm -f "$pidfile"
    log "$name: stopped (pid $pid)"
}

write_env() { # .stack/env: KEY=VALUE for every running service
    local tmp="$STACK_DIR/env.tmp"
    mkdir -p "$STACK_DIR"
    : >"$tmp"
    if kafka_running; then echo "KAFKA_BROKER=$HOST:$(<"$STACK_DIR/kafka.port")" >>"$tmp"; fi
    if redis_running; then echo "REDIS_URL=redis://$HOST:$(<"$STACK_DIR/redis.port")/0" >>"$tmp"; fi
    mv -f "$tmp" "$STACK_DIR/env"
}

# --------------------------------------------------------------------------- kafka

KAFKA_DIR="$STACK_DIR/kafka"
KAFKA_PID="$STACK_DIR/kafka.pid"
KAFKA_LOG="$STACK_DIR/kafka.log"
KAFKA_MAIN=kafka.Kafka

kafka_running() {
    pid_alive "$KAFKA_PID" "$KAFKA_MAIN" && [[ -s "$STACK_DIR/kafka.port" ]] &&
        port_open "$(<"$STACK_DIR/kafka.port")"
}

kafka_major() { echo "${KAFKA_VERSION%%.*}"; }

kafka_fetch() { # download kafka_2.13:<ver> + runtime deps into $KAFKA_LIBS, once
    if [[ -f "$KAFKA_LIBS/.complete" ]]; then return 0; fi
    need "$MVN" "apt-get install -y maven"
    local pom="$ROOT/scripts/kafka/pom.xml" started=$SECONDS
    local -a props=("-Dkafka.version=$KAFKA_VERSION")
    if (("$(kafka_major)" < 4)); then
        # Kafka 3.x logs through slf4j 1.7 + reload4j (log4j 1.x API).
        props+=(-Dslf4j.binding.groupId=org.slf4j -Dslf4j.binding.artifactId=slf4j-reload4j
            -Dslf4j.binding.version=1.7.36)
    fi
    log "kafka: fetching org.apache.kafka:kafka_2.13:$KAFKA_VERSION and runtime deps into $KAFKA_LIBS"
    rm -rf "$KAFKA_LIBS"
    mkdir -p "$KAFKA_LIBS"
    local attempt
    for attempt in 1 2; do
        if ! "$MVN" -q -B -Dstyle.color=never -f "$pom" "${props[@]}" dependency:copy-dependencies \
            -DincludeScope=runtime -DoutputDirectory="$KAFKA_LIBS" >"$KAFKA_CACHE/fetch.log" 2>&1; then
            tail -n 30 "$KAFKA_CACHE/fetch.log" >&2
            die "kafka: maven could not fetch kafka $KAFKA_VERSION (check network / version; log: $KAFKA_CACHE/fetch.log)"
        fi
        (("$(kafka_major)" < 4)) && break
        # Kafka 4.x uses log4j2: align the slf4j->log4j2 bridge with the log4j-api
        # version and slf4j major that this Kafka release actually pulled in.
        local l4j slf artifact
        l4j="$(find "$KAFKA_LIBS" -name 'log4j-api-*.jar' -printf '%f\n' | sed -E 's/^log4j-api-(.*)\.jar$/\1/' | head -1)"
        slf="$(find "$KAFKA_LIBS" -name 'slf4j-api-*.jar' -printf '%f\n' | sed -E 's/^slf4j-api-([0-9]+).*/\1/' | head -1)"
        artifact=log4j-slf4j-impl
        [[ "$slf" == 2 ]] && artifact=log4j-slf4j2-impl
        if [[ -n "$l4j" && -f "$KAFKA_LIBS/$artifact-$l4j.jar" ]] || [[ -z "$l4j" ]] || ((attempt == 2)); then
            break
        fi
        log "kafka: re-fetching with $artifact $l4j to match log4j-api"
        rm -rf "$KAFKA_LIBS" && mkdir -p "$KAFKA_LIBS"
        props+=("-Dslf4j.binding.artifactId=$artifact" "-Dslf4j.binding.version=$l4j")
    done
    [[ -f "$KAFKA_LIBS/kafka_2.13-$KAFKA_VERSION.jar" ]] || die "kafka: kafka_2.13-$KAFKA_VERSION.jar missing after fetch"
    touch "$KAFKA_LIBS/.complete"
    log "kafka: fetched $(find "$KAFKA_LIBS" -name '*.jar' | wc -l) jars in $((SECONDS - started)) s"
}

kafka_write_config() { # kafka_write_config PORT CONTROLLER_PORT
    local port="$1" cport="$2"
    mkdir -p "$KAFKA_DIR/data"
    cat >"$KAFKA_DIR/server.properties" <<EOF
# Generated by scripts/stack.sh -- single-node KRaft (broker+controller) on loopback.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$HOST:$cport
listeners=PLAINTEXT://$HOST:$port,CONTROLLER://$HOST:$cport
advertised.listeners=PLAINTEXT://$HOST:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$KAFKA_DIR/data
num.partitions=8
default.replication.factor=1
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=8
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
# Keep it light (2 cores): fewer threads, small cleaner buffer.
num.network.threads=2
num.io.threads=4
background.threads=2
num.recovery.threads.per.data.dir=1
num.replica.fetchers=1
log.cleaner.threads=1
log.cleaner.dedupe.buffer.size=16777216
log.retention.hours=24
EOF
    if (("$(kafka_major)" < 4)); then
        cat >"$KAFKA_DIR/log4j.properties" <<'EOF'
log4j.rootLogger=INFO, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.org.apache.kafka.common.config.AbstractConfig=WARN
log4j.logger.kafka.server.KafkaConfig=WARN
EOF
    else
        cat >"$KAFKA_DIR/log4j2.properties" <<'EOF'
status = warn
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = STDOUT
logger.config.name = org.apache.kafka.common.config.AbstractConfig
logger.config.level = WARN
logger.kconfig.name = kafka.server.KafkaConfig
logger.kconfig.level = WARN
shutdownHook = disable
EOF
    fi
}

kafka_jvm_opts() {
    local -a opts
    read -r -a opts <<<"$KAFKA_HEAP_OPTS"
    opts+=(-XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExitOnOutOfMemoryError
        -Djava.awt.headless=true -Dkafka.logs.dir="$STACK_DIR")
    if (("$(kafka_major)" < 4)); then
        opts+=("-Dlog4j.configuration=file:$KAFKA_DIR/log4j.properties")
    else
        opts+=("-Dlog4j2.configurationFile=$KAFKA_DIR/log4j2.properties")
    fi
    printf '%s\n' "${opts[@]}"
}

kafka_metadata_ok() { # a Metadata v4 request answered with >=1 broker (stdlib python)
    local port="$1"
    if ! command -v "$PYTHON" >/dev/null 2>&1; then
        # No python: fall back to the log line plus an open port.
        port_open "$port" && grep -q 'Kafka Server started\|started (kafka.server' "$KAFKA_LOG"
        return
    fi
    "$PYTHON" - "$HOST" "$port" <<'EOF' 2>/dev/null
import socket, struct, sys
host, port = sys.argv[1], int(sys.argv[2])
cid = b"stack.sh"
# RequestHeader v1 + MetadataRequest v4 (topics=null -> all, allow_auto_topic_creation=false)
body = struct.pack(">hhih", 3, 4, 7, len(cid)) + cid + struct.pack(">ib", -1, 0)
with socket.create_connection((host, port), timeout=3) as s:
    s.sendall(struct.pack(">i", len(body)) + body)
    def recv(n):
        buf = b""
        while len(buf) < n:
            chunk = s.recv(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return buf
    size = struct.unpack(">i", recv(4))[0]
    resp = recv(size)
corr, _throttle, nbrokers = struct.unpack(">iii", resp[:12])
sys.exit(0 if corr == 7 and nbrokers >= 1 else 1)
EOF
}

kafka_ready() {
    local port="$1"
    pid_alive "$KAFKA_PID" "$KAFKA_MAIN" || return 2
    port_open "$port" && kafka_metadata_ok "$port"
}

kafka_start() {
    mkdir -p "$STACK_DIR"
    if kafka_running; then
        local port
        port="$(<"$STACK_DIR/kafka.port")"
        if wait_until "$STACK_TIMEOUT" kafka_metadata_ok "$port"; then
            log "kafka: already running on $HOST:$port (pid $(<"$KAFKA_PID"))"
            return 0
        fi
        die "kafka: pid $(<"$KAFKA_PID") is up but not answering metadata requests; see $KAFKA_LOG"
    fi
    if pid_alive "$KAFKA_PID" "$KAFKA_MAIN"; then
        # Started but port not open yet (e.g. a concurrent start): wait for it.
        local port
        port="$(remembered_port "$STACK_DIR/kafka.port" 0)"
        if ((port > 0)) && wait_until "$STACK_TIMEOUT" kafka_ready "$port"; then
            log "kafka: running on $HOST:$port (pid $(<"$KAFKA_PID"))"
            return 0
        fi
        die "kafka: pid $(<"$KAFKA_PID") is alive but never became ready; run '$0 stop kafka' and see $KAFKA_LOG"
    fi
    rm -f "$KAFKA_PID"
    need "$JAVA" "apt-get install -y openjdk-17-jre-headless (Kafka needs Java 17+)"
    kafka_fetch

    local started=$SECONDS port cport
    port="$(pick_port "$(remembered_port "$STACK_DIR/kafka.port" "${KAFKA_PORT:-19092}")")"
    cport="$(pick_port "$(remembered_port "$STACK_DIR/kafka.controller.port" "${KAFKA_CONTROLLER_PORT:-19093}")" "$port")"
    kafka_write_config "$port" "$cport"
    echo "$port" >"$STACK_DIR/kafka.port"
    echo "$cport" >"$STACK_DIR/kafka.controller.port"

    local -a jvm
    mapfile -t jvm < <(kafka_jvm_opts)
    local cp="$KAFKA_LIBS/*"

    # A data dir formatted by another Kafka version (or a half-finished format) is reset.
    if [[ -f "$KAFKA_DIR/data/meta.properties" && "$(cat "$KAFKA_DIR/formatted-by" 2>/dev/null)" != "$KAFKA_VERSION" ]]; then
        log "kafka: data dir was formatted by another Kafka version; wiping $KAFKA_DIR/data"
        rm -rf "$KAFKA_DIR/data" && mkdir -p "$KAFKA_DIR/data"
    fi
    if [[ ! -f "$KAFKA_DIR/data/meta.properties" ]]; then
        local cluster_id
        # 16 random bytes, base64url without padding = a Kafka Uuid string. One in
        # 64 starts with '-', which the tool's argument parser takes for an option:
        # draw again until it does not.
        cluster_id="-"
        while [[ "$cluster_id" == -* ]]; do
            cluster_id="$(head -c16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
        done
        log "kafka: formatting storage (cluster id $cluster_id)"
        "$JAVA" "${jvm[@]}" -cp "$cp" kafka.tools.StorageTool format \
            -t "$cluster_id" -c "$KAFKA_DIR/server.properties" --ignore-formatted \
            >"$STACK_DIR/kafka-format.log" 2>&1 ||
            { tail -n 30 "$STACK_DIR/kafka-format.log" >&2; die "kafka: storage format failed (full log: $STACK_DIR/kafka-format.log)"; }
        echo "$KAFKA_VERSION" >"$KAFKA_DIR/formatted-by"
    fi

    log "kafka: starting $KAFKA_VERSION on $HOST:$port (controller $cport)"
    {
        echo "==== $(date -Is) starting kafka $KAFKA_VERSION"
    } >>"$KAFKA_LOG"
    # setsid: own session so Ctrl-C in the calling shell/make does not kill it.
    nohup setsid "$JAVA" "${jvm[@]}" -cp "$cp" "$KAFKA_MAIN" "$KAFKA_DIR/server.properties" \
        >>"$KAFKA_LOG" 2>&1 </dev/null 9>&- &
    echo $! >"$KAFKA_PID"

    local rc=0
    wait_until "$STACK_TIMEOUT" kafka_ready "$port" || rc=$?
    if ((rc != 0)); then
        echo "---- last 40 lines of $KAFKA_LOG ----" >&2
        tail -n 40 "$KAFKA_LOG" >&2
        if pid_alive "$KAFKA_PID" "$KAFKA_MAIN"; then
            stop_pid kafka "$KAFKA_PID" "$KAFKA_MAIN"
            die "kafka: not ready after ${STACK_TIMEOUT}s (killed it)"
        fi
        rm -f "$KAFKA_PID"
        die "kafka: process exited during startup"
    fi
    log "kafka: ready on $HOST:$port in $((SECONDS - started)) s (pid $(<"$KAFKA_PID"))"
}

kafka_stop() {
    stop_pid kafka "$KAFKA_PID" "$KAFKA_MAIN"
    if [[ "${CLEAN:-0}" == 1 ]]; then
        # The worker's RocksDB table (make run's DATA_DIR) holds offsets of this
        # cluster's changelog topics: it goes with the cluster.
        rm -rf "$KAFKA_DIR" "$STACK_DIR/kafka.port" "$STACK_DIR/kafka.controller.port" \
            "$STACK_DIR/worker-data"
        log "kafka: removed $KAFKA_DIR and $STACK_DIR/worker-data"
    fi
}

# --------------------------------------------------------------------------- redis

REDIS_DIR="$STACK_DIR/redis"
REDIS_PID="$STACK_DIR/redis.pid"
REDIS_LOG="$STACK_DIR/redis.log"

redis_running() {
    pid_alive "$REDIS_PID" redis-server && [[ -s "$STACK_DIR/redis.port" ]] &&
        port_open "$(<"$STACK_DIR/redis.port")"
}

redis_ping() { # redis_ping PORT -> 0 on PONG
    local port="$1" reply
    if command -v redis-cli >/dev/null 2>&1; then
        [[ "$(redis-cli -h "$HOST" -p "$port" ping 2>/dev/null)" == PONG ]]
        return
    fi
    exec 3<>"/dev/tcp/$HOST/$port" 2>/dev/null || return 1
    printf 'PING\r\n' >&3
    read -r -t 2 reply <&3 || true
    exec 3>&-
    [[ "$reply" == +PONG* ]]
}

redis_start() {
    mkdir -p "$STACK_DIR"
    if redis_running && redis_ping "$(<"$STACK_DIR/redis.port")"; then
        log "redis: already running on $HOST:$(<"$STACK_DIR/redis.port") (pid $(<"$REDIS_PID"))"
        return 0
    fi
    if pid_alive "$REDIS_PID" redis-server; then
        local port
        port="$(remembered_port "$STACK_DIR/redis.port" 0)"
        if ((port > 0)) && wait_until 10 redis_ping "$port"; then
            log "redis: running on $HOST:$port"
            return 0
        fi
        die "redis: pid $(<"$REDIS_PID") is alive but not answering PING; run '$0 stop redis' and see $REDIS_LOG"
    fi
    rm -f "$REDIS_PID"
    need redis-server "apt-get install -y redis-server"
    mkdir -p "$REDIS_DIR"
    local port
    port="$(pick_port "$(remembered_port "$STACK_DIR/redis.port" "${REDIS_PORT:-16379}")")"
    echo "$port" >"$STACK_DIR/redis.port"
    redis-server --bind "$HOST" --port "$port" --save "" --appendonly no \
        --daemonize yes --pidfile "$REDIS_PID" --logfile "$REDIS_LOG" --dir "$REDIS_DIR" \
        --protected-mode yes 9>&- ||
        { tail -n 20 "$REDIS_LOG" >&2 2>/dev/null || true; die "redis: redis-server failed to start"; }
    if ! wait_until 15 redis_ping "$port"; then
        tail -n 20 "$REDIS_LOG" >&2 || true
        die "redis: no PONG on $HOST:$port within 15 s"
    fi
    wait_until 5 pid_alive "$REDIS_PID" redis-server || die "redis: pid file $REDIS_PID not written"
    log "redis: ready on $HOST:$port (pid $(<"$REDIS_PID"))"
}

redis_stop() {
    stop_pid redis "$REDIS_PID" redis-server
    if [[ "${CLEAN:-0}" == 1 ]]; then
        rm -rf "$REDIS_DIR" "$STACK_DIR/redis.port"
        log "redis: removed $REDIS_DIR"
    fi
}

# --------------------------------------------------------------------------- commands

services() { # services [kafka|redis|all] -> names, in start order
    case "${1:-all}" in
    all) echo redis kafka ;;
    kafka | redis) echo "$1" ;;
    *) die "unknown service '$1' (kafka|redis|all)" ;;
    esac
}

cmd_status() {
    local rc=0
    if kafka_running; then
        echo "kafka  running  $HOST:$(<"$STACK_DIR/kafka.port")  pid $(<"$KAFKA_PID")  version $(cat "$KAFKA_DIR/formatted-by" 2>/dev/null || echo "?")"
    else
        echo "kafka  stopped"
        rc=1
    fi
    if redis_running && redis_ping "$(<"$STACK_DIR/redis.port")"; then
        echo "redis  running  $HOST:$(<"$STACK_DIR/redis.port")  pid $(<"$REDIS_PID")"
    else
        echo "redis  stopped"
        rc=1
    fi
    return "$rc"
}

cmd_env() {
    write_env
    if [[ ! -s "$STACK_DIR/env" ]]; then
        log "nothing running (start with: $0 start)"
        return 0
    fi
    sed -e 's/^/export /' "$STACK_DIR/env"
}

usage() {
    sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

main() {
    local cmd="${1:-}"
    [[ $# -gt 0 ]] && shift
    CLEAN=0
    local target=all arg
    for arg in "$@"; do
        case "$arg" in
        --clean) CLEAN=1 ;;
        kafka | redis | all) target="$arg" ;;
        *) die "unknown argument '$arg'" ;;
        esac
    done
    if [[ "$cmd" == start || "$cmd" == stop ]]; then
        # Serialise concurrent start/stop calls (e.g. parallel make targets).
        mkdir -p "$STACK_DIR"
        if command -v flock >/dev/null 2>&1; then
            exec 9>"$STACK_DIR/.lock"
            flock -w $((STACK_TIMEOUT + 60)) 9 || die "another stack.sh holds $STACK_DIR/.lock"
        fi
    fi
    case "$cmd" in
    start)
        local s
        for s in $(services "$target"); do "${s}_start"; done
        write_env
        ;;
    stop)
        local s
        for s in $(services "$target"); do "${s}_stop"; done
        write_env
        ;;
    status) cmd_status ;;
    env) cmd_env ;;
    -h | --help | help | "") usage ;;
    *) die "unknown command '$cmd'" ;;
    esac
}

main "$@"
