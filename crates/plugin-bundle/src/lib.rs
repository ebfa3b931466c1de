//! The managed Docker plugin: its typed `config.json` ([`config`]), the plugin folder with its
//! rootfs ([`rootfs`]), and installing it into the local Docker ([`install`]). The command is
//! `s3vol-plugin` (src/bin).

pub mod config;
pub mod install;
pub mod rootfs;
