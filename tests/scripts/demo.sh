#!/usr/bin/env bash
# `make run`: builds pilot, mixer and citadel and runs them on the embedded default (the sample
# config directory, no Kubernetes), then waits for Ctrl-C and stops everything it started.
#
# DEMO_CHECK=1 starts everything, checks that each service answers /ready and /metrics, prints
# the same banner and exits (used by CI to keep `make run` honest).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SAMPLE="${DEMO_CONFIG_DIR:-$ROOT/manifests/sample}"
STATE="$ROOT/target/demo"
BIN="$ROOT/target/debug"
mkdir -p "$STATE"

say() { printf '\033[1m%s\033[0m\n' "$*"; }

say "==> building pilot, mixer, citadel and the sample upstreams"
cargo build --bin pilot --bin mixer --bin citadel --bin sample-upstream
say "==> installing Envoy (first run only)"
ENVOY="$(bash "$ROOT/tests/scripts/install-envoy.sh")"
MESH="${DEMO_MESH:-$ROOT/manifests/mesh.yaml}"
NODE="sidecar~127.0.0.10~productpage-demo.default~default.svc.cluster.local"

PIDS=()
cleanup() {
    trap - EXIT INT TERM
    if [ "${#PIDS[@]}" -gt 0 ]; then
        say "==> stopping (pids ${PIDS[*]})"
        kill -TERM "${PIDS[@]}" 2>/dev/null || true
        for pid in "${PIDS[@]}"; do
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -KILL "$pid" 2>/dev/null || true
        done
        wait 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start() {
    local name="$1"; shift
    "$BIN/$name" "$@" >"$STATE/$name.log" 2>&1 &
    PIDS+=("$!")
    echo "$!" >"$STATE/$name.pid"
    say "==> started $name (pid $!, log target/demo/$name.log)"
}

wait_ready() {
    local name="$1" url="$2"
    for _ in $(seq 100); do
        if curl -fsS "$url/ready" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    echo "$name did not become ready; its log:" >&2
    cat "$STATE/$name.log" >&2
    return 1
}

# The sample services of manifests/sample/services.yaml, each answering with its name.
start sample-upstream reviews-v1=127.0.0.11:19080 reviews-v2=127.0.0.12:19080 ratings-v1=127.0.0.13:19080
start pilot --config-dir "$SAMPLE" --mesh "$MESH" --grpc-addr 127.0.0.1:15010 --http-addr 127.0.0.1:15014
# Demo ports stay below the kernel's ephemeral range (32768+), where an outgoing connection
# could already hold them; so the prometheus adapter is on 14242 here, not Istio's 42422.
start mixer --config-dir "$SAMPLE" --http-addr 127.0.0.1:15015 \
    --grpc-addr 127.0.0.1:9091 --prometheus-addr 127.0.0.1:14242
start citadel --config-dir "$SAMPLE" --http-addr 127.0.0.1:15016 --grpc-addr 127.0.0.1:8060 \
    --secret-dir "$STATE/secrets" --ca-dir "$STATE/ca"

wait_ready pilot http://127.0.0.1:15014
wait_ready mixer http://127.0.0.1:15015
wait_ready citadel http://127.0.0.1:15016

# A real Envoy sidecar for a "productpage" workload, bootstrapped by pilot, no iptables.
"$BIN/pilot" bootstrap --node "$NODE" --xds-address 127.0.0.1:15010 --admin-port 15000 \
    --meta INTERCEPTION_MODE=NONE --label app=productpage >"$STATE/envoy.json"
"$ENVOY" -c "$STATE/envoy.json" --disable-hot-restart --base-id 15000 --concurrency 1 \
    --log-level warn >"$STATE/envoy.log" 2>&1 &
PIDS+=("$!")
echo "$!" >"$STATE/envoy.pid"
say "==> started envoy (pid $!, admin 127.0.0.1:15000, log target/demo/envoy.log)"
wait_ready envoy http://127.0.0.1:15000

# Show the routing: 20 requests through the sidecar, then one as jason.
v1=0; v2=0
for _ in $(seq 20); do
    case "$(curl -fsS -x http://127.0.0.1:15080 http://reviews:9080/)" in
        reviews-v1) v1=$((v1 + 1)) ;;
        reviews-v2) v2=$((v2 + 1)) ;;
    esac
done
jason="$(curl -fsS -x http://127.0.0.1:15080 -H 'end-user: jason' http://reviews:9080/)"
say "==> 20 requests to reviews through the sidecar: $v1 on reviews-v1, $v2 on reviews-v2 (rule: 80/20); as jason: $jason"
if [ "$((v1 + v2))" -ne 20 ] || [ "$jason" != reviews-v2 ]; then
    echo "routing through the sidecar did not work; see target/demo/*.log" >&2
    exit 1
fi

# Citadel writes a certificate for every ServiceAccount of the sample.
for _ in $(seq 100); do
    [ -e "$STATE/secrets/default/istio.bookinfo-reviews/cert-chain.pem" ] && break
    sleep 0.1
done
if [ ! -e "$STATE/secrets/default/istio.bookinfo-reviews/cert-chain.pem" ]; then
    echo "citadel wrote no certificates; see target/demo/citadel.log" >&2
    exit 1
fi
say "==> citadel wrote workload certificates: $(cd "$STATE/secrets" && ls -d */istio.* | tr '\n' ' ')"

if [ "${DEMO_CHECK:-0}" = 1 ]; then
    for port in 15014 15015 15016; do
        # Read the whole page first: `grep -q` stops early, and curl would fail on SIGPIPE.
        page="$(curl -fsS "http://127.0.0.1:$port/metrics")"
        grep -q '^istio_build' <<<"$page" \
            || { echo "no istio_build metric on :$port" >&2; exit 1; }
    done
fi

cat <<BANNER

  pilot, mixer and citadel are running on the sample config in ${SAMPLE#"$ROOT"/}.

  An Envoy sidecar (admin localhost:15000) routes through its HTTP proxy port 15080.

  Try:
    curl -x localhost:15080 http://reviews:9080/                      # 80% reviews-v1, 20% reviews-v2
    curl -x localhost:15080 -H 'end-user: jason' http://reviews:9080/ # always reviews-v2
    curl -x localhost:15080 http://ratings:9080/
    curl localhost:15014/debug/syncz           # what pilot sent the sidecar, and its ACKs
    curl localhost:15000/config_dump           # what the sidecar got
    curl localhost:15014/ready                 # each service's readiness (mixer :15015, citadel :15016)
    curl localhost:15015/debug/configz         # mixer's rules from manifests/sample/policy.yaml
    curl localhost:14242/metrics               # the metrics mixer's prometheus adapter serves
    openssl x509 -noout -text -in target/demo/secrets/default/istio.bookinfo-reviews/cert-chain.pem
                                               # a SPIFFE certificate citadel issued (rotated before expiry)
    curl localhost:15014/metrics               # Prometheus metrics
    curl localhost:15014/debug/configz         # the config pilot loaded, and anything it refused
    \$EDITOR ${SAMPLE#"$ROOT"/}/routing.yaml      # edits reach the sidecar within a second

  Logs are in target/demo/. Press Ctrl-C to stop everything.

BANNER

if [ "${DEMO_CHECK:-0}" = 1 ]; then
    say "==> DEMO_CHECK: every service answered /ready and /metrics"
    exit 0
fi

# Wait until Ctrl-C, or until a service dies.
while true; do
    for i in "${!PIDS[@]}"; do
        if ! kill -0 "${PIDS[$i]}" 2>/dev/null; then
            echo "a service (pid ${PIDS[$i]}) exited; see target/demo/*.log" >&2
            exit 1
        fi
    done
    sleep 1
done
