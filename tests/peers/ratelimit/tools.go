//go:build tools

// Package tools pins the one command bench-compare.sh builds from this module,
// so that `go mod tidy` keeps what it needs in go.mod/go.sum.
package tools

import (
	_ "github.com/envoyproxy/ratelimit/src/service_cmd"
)
