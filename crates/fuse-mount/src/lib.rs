//! s3vol's filesystem: a bucket (or a prefix of it) as a POSIX-ish tree in which each file is
//! one plain object.
//!
//! - [`core`]: the filesystem over any [`ObjectStore`](common::ObjectStore), no FUSE types;
//!   tested over the in-memory store.
//! - [`fuse`]: the fuser adapter, answering each request from a tokio task.
//! - [`session`]: mounting and unmounting.
//!
//! docs/SEMANTICS.md is the contract this crate keeps.

pub mod core;
pub mod fuse;
pub mod session;

pub use crate::core::{Fs, FsConfig, FsError};
pub use session::{
    check_mountpoint, flush_and_detach, is_mounted, lazy_unmount, mount, take_over, MountHandle,
    MountOptions,
};
