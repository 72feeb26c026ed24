#!/usr/bin/env bash
# Builds the local test cluster's binaries (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, kwok) from the Go module proxy into
#   ${MESH_CACHE:-$HOME/.cache/mesh}/cluster/bin
# Each binary is skipped when it is already there with a stamp that matches its
# wrapper module (go.mod + go.sum + sources), the Go version and the flags.
#
# usage: build.sh [--force] [component...]   components: etcd k8s kwok (default: all)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE_ROOT="${MESH_CACHE:-$HOME/.cache/mesh}/cluster"
BIN_DIR="$CACHE_ROOT/bin"
FORCE=0

log() { printf '[cluster build %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Version of a required module, read from a wrapper module's go.mod.
modver() { awk -v m="$2" '($1 == m || ($1 == "require" && $2 == m)) { print ($1 == "require" ? $3 : $2); exit }' "$HERE/$1/go.mod"; }

K8S_VERSION="$(modver k8s k8s.io/kubernetes)"
ETCD_VERSION="$(modver etcd go.etcd.io/etcd/server/v3)"
KWOK_VERSION="$(modver kwok sigs.k8s.io/kwok)"
[[ -n $K8S_VERSION && -n $ETCD_VERSION && -n $KWOK_VERSION ]] || die "cannot read versions from the wrapper go.mod files"

stamp_of() { # component, extra text -> hash of everything that decides the binary
	local dir="$HERE/$1"
	{
		printf '%s\n' "$2"
		go env GOVERSION GOOS GOARCH
		cat "$dir/go.mod" "$dir/go.sum" "$dir"/*.go
	} | sha256sum | cut -c1-32
}

is_fresh() { # binary, stamp
	[[ $FORCE == 0 && -x "$BIN_DIR/$1" && -f "$BIN_DIR/.$1.stamp" && "$(cat "$BIN_DIR/.$1.stamp")" == "$2" ]]
}

# go_build component binary package ldflags
go_build() {
	local comp=$1 bin=$2 pkg=$3 ldflags=$4 stamp t0
	stamp="$(stamp_of "$comp" "$pkg $ldflags")"
	if is_fresh "$bin" "$stamp"; then
		log "$bin is up to date"
		return 0
	fi
	log "building $bin ($pkg) ..."
	t0=$SECONDS
	rm -f "$BIN_DIR/.$bin.stamp"
	(
		cd "$HERE/$comp"
		CGO_ENABLED=0 GOFLAGS="${GOFLAGS:+$GOFLAGS }-mod=mod" \
			go build -trimpath -ldflags "$ldflags" -o "$BIN_DIR/$bin.tmp" "$pkg"
	) || die "build of $bin failed"
	mv -f "$BIN_DIR/$bin.tmp" "$BIN_DIR/$bin"
	printf '%s\n' "$stamp" >"$BIN_DIR/.$bin.stamp"
	log "built $bin in $((SECONDS - t0))s"
}

build_k8s() {
	local minor ldflags
	minor="$(cut -d. -f2 <<<"$K8S_VERSION")"
	ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION"
	ldflags+=" -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"
	ldflags+=" -X k8s.io/component-base/version.gitTreeState=clean"
	local b
	for b in kube-apiserver kube-controller-manager kube-scheduler; do
		go_build k8s "$b" "k8s.io/kubernetes/cmd/$b" "$ldflags"
	done
}
build_etcd() { go_build etcd etcd meshtest/cluster/etcd "-s -w"; }
build_kwok() { go_build kwok kwok sigs.k8s.io/kwok/cmd/kwok "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION"; }

main() {
	local comps=()
	while (($#)); do
		case $1 in
		--force) FORCE=1 ;;
		etcd | k8s | kwok) comps+=("$1") ;;
		-h | --help) sed -n '2,9p' "$0"; exit 0 ;;
		*) die "unknown argument: $1" ;;
		esac
		shift
	done
	((${#comps[@]})) || comps=(etcd k8s kwok)
	command -v go >/dev/null || die "go is not installed"
	mkdir -p "$BIN_DIR"
	local t0=$SECONDS c
	log "versions: kubernetes $K8S_VERSION, etcd $ETCD_VERSION, kwok $KWOK_VERSION; $(go env GOVERSION); bin dir $BIN_DIR"
	for c in "${comps[@]}"; do "build_$c"; done
	log "all binaries ready in $((SECONDS - t0))s"
}

main "$@"
