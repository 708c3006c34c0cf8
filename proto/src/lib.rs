//! The protobuf messages pm stores as etcd values (see `proto/pm.proto`).
//!
//! This crate holds types only. Every field is documented in the `.proto` file, and the
//! generated code carries those comments.

#![allow(clippy::doc_lazy_continuation)]

include!(concat!(env!("OUT_DIR"), "/pm.v1.rs"));
