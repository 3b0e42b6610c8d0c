//! The `atiende` command's library: the whole platform in one process for
//! development ([`dev`]), and the operator subcommands ([`ops`]).
//!
//! Architecture invariant: this is the only crate that depends on all three
//! services. It composes them; it adds no behaviour of its own beyond the
//! development credentials.

pub mod dev;
pub mod ops;
