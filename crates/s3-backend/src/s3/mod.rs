//! [`S3Store`]: the object store on real S3 (AWS, Ceph RGW, MinIO) through aws-sdk-s3.

mod config;
mod errors;
mod store;

pub use config::{check_endpoint_url, CredentialsSource, PathStyle, S3Config};
pub use store::S3Store;
