//! shared runtime
