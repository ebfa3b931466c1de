//! The `s3vol` binary's logic: `s3vol mount` ([`mount`]) and `s3vol serve`, the Docker volume
//! plugin ([`serve`]: the protocol in [`api`], volume lifecycle in [`manager`], state in
//! [`catalogue`], options in [`options`], mounts in [`mounter`]).

pub mod api;
pub mod catalogue;
pub mod manager;
pub mod metrics_endpoint;
pub mod mount;
pub mod mounter;
pub mod options;
pub mod serve;
pub mod settings;
