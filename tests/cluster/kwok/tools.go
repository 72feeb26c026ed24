//go:build tools

// Package tools only pins the command that build.sh compiles, so that
// `go mod tidy` keeps every module it needs in go.mod/go.sum.
package tools

import _ "sigs.k8s.io/kwok/cmd/kwok"
