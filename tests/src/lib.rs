//! Cross-service end-to-end tests live in `e2e/`: the whole platform as
//! `atiende dev` runs it, and services talking to each other over gRPC.
