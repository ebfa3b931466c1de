//! The Docker volume plugin (`s3vol serve`): Docker's volume plugin protocol on a unix socket,
//! volumes as FUSE mounts, the state catalogue.
//!
//! Not built yet: issue #5 fills this crate in.
