//! The `s3vol` binary's logic. Today: `s3vol mount` ([`mount`]). The Docker volume plugin
//! (`s3vol serve`: the protocol, volume lifecycle and state) comes with issue #5.

pub mod mount;
