//! The managed Docker plugin bundle: typed `config.json` and the plugin rootfs.
//!
//! Not built yet: issue #6 fills this crate in.
