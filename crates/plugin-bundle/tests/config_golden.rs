//! The generated config.json is what Docker reads: a golden file guards every change to it
//! (regenerate with `UPDATE_GOLDEN=1 cargo test -p plugin-bundle --test config_golden` and
//! review the diff), and the settings users rely on (product.md) are checked by name.

use plugin_bundle::config::{s3vol_config, to_json};

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/config.json");

#[test]
fn config_json_matches_the_golden_file() {
    let generated = to_json(&s3vol_config());
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(GOLDEN, &generated).unwrap();
    }
    let golden = std::fs::read_to_string(GOLDEN).unwrap();
    assert_eq!(
        generated, golden,
        "config.json changed; if on purpose, regenerate with UPDATE_GOLDEN=1 and review"
    );
}

#[test]
fn every_product_setting_is_a_settable_env_var() {
    let config = s3vol_config();
    for name in [
        "AWS_ENDPOINT_URL",
        "AWS_REGION",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_CA_BUNDLE",
        "S3VOL_PATH_STYLE",
        "S3VOL_DEFAULT_BUCKET",
        "S3VOL_CACHE_SIZE",
        "S3VOL_MEMORY_LIMIT",
        "S3VOL_LOG",
    ] {
        let var = config
            .env
            .iter()
            .find(|v| v.name == name)
            .unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(var.settable, ["value"], "{name} is not settable");
    }
}

#[test]
fn the_config_has_what_a_fuse_volume_plugin_needs() {
    let json: serde_json::Value = serde_json::from_str(&to_json(&s3vol_config())).unwrap();
    assert_eq!(json["interface"]["types"][0], "docker.volumedriver/1.0");
    assert_eq!(json["interface"]["socket"], "s3vol.sock");
    assert_eq!(json["network"]["type"], "host");
    assert_eq!(json["linux"]["capabilities"][0], "CAP_SYS_ADMIN");
    assert_eq!(json["linux"]["devices"][0]["path"], "/dev/fuse");
    let mount_root = json["propagatedMount"].as_str().unwrap();
    let env = json["env"].as_array().unwrap();
    let value_of = |name: &str| {
        env.iter()
            .find(|v| v["name"] == name)
            .map(|v| v["value"].as_str().unwrap().to_string())
    };
    assert_eq!(value_of("S3VOL_MOUNT_ROOT").as_deref(), Some(mount_root));
    // The state, cache and config folders are host bind mounts (outside the rootfs), their
    // sources settable, and s3vol is told where they are.
    for (name, var) in [
        ("state", "S3VOL_STATE_DIR"),
        ("cache", "S3VOL_CACHE_DIR"),
        ("config", "S3VOL_CONFIG_DIR"),
    ] {
        let mount = json["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .unwrap_or_else(|| panic!("mount {name} missing"));
        assert_eq!(mount["type"], "bind");
        assert_eq!(mount["settable"][0], "source");
        assert_eq!(value_of(var).as_deref(), mount["destination"].as_str());
        assert!(!mount["destination"]
            .as_str()
            .unwrap()
            .starts_with(mount_root));
    }
}
