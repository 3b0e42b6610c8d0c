//! Atiende's protobuf contracts as Rust types, generated at build time from
//! `proto/` by protox and tonic-prost-build.
//!
//! # Layout
//! - `common::v1`: `Money`, `Environment`, `TimeRange`.
//! - `identity::v1`, `notifications::v1`, `payments::v1`: one module per
//!   service package, with messages, `*_server` and `*_client` modules.
//! - [`FILE_DESCRIPTOR_SET`]: every file, for gRPC reflection.
//!
//! Only the gRPC adapters of the services use these types; domain code speaks
//! its own types.

#![allow(clippy::all, clippy::pedantic)]

/// The encoded `FileDescriptorSet` of every Atiende proto file.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/atiende_descriptor.bin"));

pub mod common {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/atiende.common.v1.rs"));
    }
}

pub mod identity {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/atiende.identity.v1.rs"));
    }
}

pub mod notifications {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/atiende.notifications.v1.rs"));
    }
}

pub mod payments {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/atiende.payments.v1.rs"));
    }
}

mod redact;
