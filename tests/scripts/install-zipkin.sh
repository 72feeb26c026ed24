#!/usr/bin/env bash
# Ensures Zipkin's server is installed and prints the absolute path of its jar on stdout.
#
# Zipkin comes from Maven Central, `io.zipkin:zipkin-server:$ZIPKIN_VERSION:jar:exec` (the
# self-contained server; runs on Java 17, from Debian's openjdk-17-jre-headless when java is
# missing), fetched with `mvn dependency:get` and copied to
# ${MESH_CACHE:-$HOME/.cache/mesh}/zipkin-<version>/zipkin.jar. The tracing tests run it
# with in-memory storage. Progress goes to stderr. Idempotent, and safe to run concurrently
# (the jar is moved into place atomically).
set -euo pipefail

ZIPKIN_VERSION="${ZIPKIN_VERSION:-3.5.1}"
CACHE="${MESH_CACHE:-$HOME/.cache/mesh}"
log() { echo "install-zipkin: $*" >&2; }

mkdir -p "$CACHE"
CACHE="$(cd "$CACHE" && pwd -P)"
DEST="$CACHE/zipkin-$ZIPKIN_VERSION"
JAR="$DEST/zipkin.jar"

java_ok() { command -v java >/dev/null && java -version 2>&1 | grep -Eq 'version "(1[7-9]|[2-9][0-9])'; }
if ! java_ok || ! command -v mvn >/dev/null; then
    pkgs=()
    java_ok || pkgs+=(openjdk-17-jre-headless)
    command -v mvn >/dev/null || pkgs+=(maven)
    log "installing Debian packages: ${pkgs[*]}"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >&2
fi

# Installed once the jar and its checksum (written last) are there.
if [ -s "$JAR" ] && [ -s "$JAR.sha1" ]; then
    echo "$JAR"
    exit 0
fi

log "fetching io.zipkin:zipkin-server:$ZIPKIN_VERSION:jar:exec from Maven Central"
REPO="${MAVEN_REPO:-$HOME/.m2/repository}"
mvn -q -B -Dstyle.color=never "-Dmaven.repo.local=$REPO" dependency:get -Dtransitive=false \
    "-Dartifact=io.zipkin:zipkin-server:$ZIPKIN_VERSION:jar:exec" >&2
SRC="$REPO/io/zipkin/zipkin-server/$ZIPKIN_VERSION/zipkin-server-$ZIPKIN_VERSION-exec.jar"
[ -s "$SRC" ] || { log "no jar at $SRC after mvn dependency:get"; exit 1; }
# The checksum Maven Central published beside it, when it was fetched.
if [ -s "$SRC.sha1" ]; then
    want="$(cut -c1-40 "$SRC.sha1")"
    have="$(sha1sum "$SRC" | cut -c1-40)"
    [ "$want" = "$have" ] || { log "sha1 mismatch for $SRC ($have, want $want)"; exit 1; }
fi

mkdir -p "$DEST"
TMP="$(mktemp "$DEST/.zipkin.jar.XXXXXX")"
trap 'rm -f "$TMP"' EXIT
cp "$SRC" "$TMP"
chmod 644 "$TMP"
mv -f "$TMP" "$JAR"
sha1sum "$JAR" | cut -c1-40 > "$JAR.sha1"
log "installed $JAR"
echo "$JAR"
