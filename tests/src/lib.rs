//! Test harness: real Envoy processes and sample upstream servers for integration tests.
