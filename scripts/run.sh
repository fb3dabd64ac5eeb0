#!/usr/bin/env bash
# make run: start the local stack, load the demo catalogue, start the worker, feed
# the demo events, print recommendations over the reply topic. Then keep running
# until Ctrl-C (or exit at once with ONCE=1), stopping everything it started.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PY:-$ROOT/.venv/bin/python}"
STACK="$ROOT/scripts/stack.sh"

started_stack=0
worker_pid=""
cleanup() {
    trap - EXIT INT TERM
    if [[ -n "$worker_pid" ]] && kill -0 "$worker_pid" 2>/dev/null; then
        echo "run: stopping the worker"
        kill -TERM "$worker_pid" 2>/dev/null || true
        wait "$worker_pid" 2>/dev/null || true
    fi
    if [[ "$started_stack" == 1 ]]; then
        echo "run: stopping the local stack"
        "$STACK" stop all >/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if ! "$STACK" status >/dev/null 2>&1; then
    started_stack=1
fi
"$STACK" start all
set -a
# shellcheck disable=SC1091
source "$ROOT/.stack/env"
set +a
export QDRANT_PATH="${QDRANT_PATH:-$ROOT/.stack/qdrant}"
export DATA_DIR="${DATA_DIR:-$ROOT/.stack/worker-data}"

if [[ ! -f "$QDRANT_PATH/.demo-loaded" ]]; then
    echo "run: embedding the demo catalogue (MovieLens, see worker/demo/MOVIELENS-LICENSE.txt)"
    "$PY" -m worker load-catalog "$ROOT/worker/demo/catalog.jsonl"
    touch "$QDRANT_PATH/.demo-loaded"
fi

log="$ROOT/.stack/worker.log"
echo "run: starting the worker (log: $log)"
"$PY" -m worker worker >"$log" 2>&1 &
worker_pid=$!
for _ in $(seq 1 240); do
    grep -q "\[^Worker\]: Ready" "$log" 2>/dev/null && break
    kill -0 "$worker_pid" 2>/dev/null || { tail -40 "$log"; echo "run: the worker exited" >&2; exit 1; }
    sleep 0.5
done
grep -q "\[^Worker\]: Ready" "$log" || { tail -40 "$log"; echo "run: worker not ready" >&2; exit 1; }

"$PY" -m worker produce "$ROOT/worker/demo/events.jsonl"
"$PY" "$ROOT/scripts/demo.py"

if [[ "${ONCE:-0}" == 1 ]]; then
    exit 0
fi
echo
echo "run: the worker is running. Try: $PY -m worker ask ml_1 --k 5"
echo "run: press Ctrl-C to stop everything this command started."
wait "$worker_pid"
