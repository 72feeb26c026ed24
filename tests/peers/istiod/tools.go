//go:build tools

// Package tools pins the one command bench-compare.sh builds from this
// wrapper module, istiod's pilot-discovery, so that `go mod tidy` keeps what it
// needs in go.mod/go.sum. Nothing of Istio's code lives here.
package tools

import (
	_ "istio.io/istio/pilot/cmd/pilot-discovery"
)
