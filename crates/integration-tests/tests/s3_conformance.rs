//! The store conformance suite (common::conformance) against the real Ceph RGW.

use integration_tests::S3Env;
use s3_backend::S3Store;

async fn rgw() -> Option<(S3Store, String)> {
    let env = S3Env::from_env()?;
    Some((env.new_bucket("conformance").await, "suite/".to_string()))
}

common::store_conformance_tests!(rgw);
