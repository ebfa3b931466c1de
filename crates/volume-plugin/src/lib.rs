//! The `s3vol` binary's logic: `s3vol mount` ([`mount`]) and `s3vol serve`, the Docker volume
//! plugin ([`serve`]: the protocol in [`api`], volume lifecycle in [`manager`], state in
//! [`catalogue`], options in [`options`], mounts in [`mounter`]; the [`supervisor`] that keeps
//! mounts alive across worker crashes, and the [`handover`] between them).

pub mod api;
pub mod catalogue;
pub mod handover;
pub mod manager;
pub mod metrics_endpoint;
pub mod mount;
pub mod mounter;
pub mod options;
pub mod serve;
pub mod settings;
pub mod supervisor;
