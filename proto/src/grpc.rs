//! The mesh's gRPC APIs, generated at build time from the `.proto` files under `proto/proto/`
//! (messages by prost, clients and servers by tonic).
//!
//! Modules follow the proto packages:
//!
//! | module | package | what |
//! |---|---|---|
//! | [`istio::v1::auth`] | `istio.v1.auth` | Citadel's CSR signing: `IstioCertificateService` and the legacy `IstioCAService` |
//! | [`istio::mixer::v1`] | `istio.mixer.v1` | Mixer's own API: the `Mixer` service (`Check`, `Report`) and compressed attribute bags |
//! | [`google::rpc`] | `google.rpc` | `Status`, the error model some Istio messages embed |
//!
//! Each service `Foo` has a client (`foo_client::FooClient`) and a server
//! (`foo_server::{Foo, FooServer}`: implement the trait, wrap it, add it to a
//! `tonic::transport::Server`).
//!
//! Google's well-known types (`google.protobuf.Struct`, `Any`, `Duration`, `Timestamp`...) are
//! not generated: fields of those types use [`prost_types`] (e.g. [`prost_types::Struct`]).
//! `protox` has their `.proto` files built in, so `import "google/protobuf/struct.proto";`
//! just works.
//!
//! # Adding an API (as Mixer's `istio.mixer.v1` was)
//!
//! 1. Put the `.proto` files under `proto/proto/`, in directories that match their package
//!    (`proto/proto/istio/mixer/v1/mixer.proto` for `package istio.mixer.v1;`). Imports are
//!    resolved from `proto/proto/` (write `import "istio/mixer/v1/attributes.proto";`), so a
//!    dependency that is not a Google well-known type must be added there too (as
//!    `google/rpc/status.proto` was).
//! 2. That is all: `build.rs` compiles every `.proto` it finds there, and the new package
//!    appears as a module here (`mesh_proto::grpc::istio::mixer::v1`). There is no `protoc`
//!    to install; parse errors are reported by `cargo build` with the file and line.
//! 3. Write the `.proto` from the wire contract (package, service, message and field names,
//!    numbers and types must match Istio's exactly for wire compatibility); keep comments your
//!    own.

#![allow(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    clippy::all,
    clippy::pedantic
)]

include!(concat!(env!("OUT_DIR"), "/mesh_grpc.rs"));

/// The crate the generated messages use for Google's well-known types (`Timestamp`,
/// `Duration`, ...), so callers build them without depending on it themselves.
pub use prost_types;
