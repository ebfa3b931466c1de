//! Installing the plugin into the local Docker Engine: build the release binary, assemble the
//! plugin folder, `docker plugin create`, `set`, `enable`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::config::host_defaults;
use crate::rootfs;

/// What `s3vol-plugin install` does.
#[derive(Debug, Clone)]
pub struct InstallPlan {
    /// Plugin name: `-d <name>` and Compose `driver: <name>` use it.
    pub name: String,
    /// The s3vol binary to bundle; `None` builds the release binary with cargo.
    pub binary: Option<PathBuf>,
    /// Where the plugin folder is assembled.
    pub bundle_dir: PathBuf,
    /// Host folders bound into the plugin.
    pub state_dir: PathBuf,
    pub cache_dir: PathBuf,
    pub config_dir: PathBuf,
    /// `NAME=value` plugin settings (AWS_ENDPOINT_URL=..., S3VOL_DEFAULT_BUCKET=...).
    pub settings: Vec<String>,
    /// Remove an installed plugin of the same name first (its volumes' catalogue is kept
    /// in the state folder).
    pub replace: bool,
    /// `docker plugin enable --timeout`: Docker's limit for each call to the plugin.
    pub enable_timeout: Option<u32>,
}

impl InstallPlan {
    pub fn new(name: &str, workspace: &Path) -> Self {
        Self {
            name: name.to_string(),
            binary: None,
            bundle_dir: target_dir(workspace).join("plugin-bundle").join(name),
            state_dir: host_defaults::STATE_DIR.into(),
            cache_dir: host_defaults::CACHE_DIR.into(),
            config_dir: host_defaults::CONFIG_DIR.into(),
            settings: Vec::new(),
            replace: false,
            enable_timeout: None,
        }
    }
}

fn target_dir(workspace: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"))
}

/// `NAME=value` with the value hidden when the name says it is a secret.
fn shown(arg: &str) -> String {
    match arg.split_once('=') {
        Some((name, _))
            if ["KEY", "SECRET", "TOKEN", "PASSWORD"]
                .iter()
                .any(|word| name.to_ascii_uppercase().contains(word)) =>
        {
            format!("{name}=***")
        }
        _ => arg.to_string(),
    }
}

/// Run a command; its stderr becomes the error (with secret settings hidden).
fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{program} {}` failed: {}",
            args.iter().map(|a| shown(a)).collect::<Vec<_>>().join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Build the release s3vol binary of `workspace` and return its path.
pub fn build_release_binary(workspace: &Path) -> Result<PathBuf, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        // The same command as scripts/test and scripts/quickstart: one set of artifacts.
        .args([
            "build",
            "--release",
            "--bin",
            "s3vol",
            "--bin",
            "s3vol-plugin",
            "--manifest-path",
        ])
        .arg(workspace.join("Cargo.toml"))
        .status()
        .map_err(|e| format!("cannot run {cargo}: {e}"))?;
    if !status.success() {
        return Err("cargo build --release --bin s3vol failed; see its output above".into());
    }
    Ok(target_dir(workspace).join("release/s3vol"))
}

pub fn is_installed(name: &str) -> bool {
    run(
        "docker",
        &["plugin", "inspect", "--format", "{{.Name}}", name],
    )
    .is_ok()
}

/// Install (and enable) the plugin as `plan` says.
pub fn install(plan: &InstallPlan, workspace: &Path) -> Result<(), String> {
    run("docker", &["version", "--format", "{{.Server.Version}}"]).map_err(|e| {
        format!("Docker is not answering ({e}); start it first (scripts/docker start)")
    })?;
    let installed = is_installed(&plan.name);
    if installed && !plan.replace {
        return Err(format!(
            "a plugin named {} is installed already; pass --replace to replace it (its volumes stay known: the catalogue is in {})",
            plan.name,
            plan.state_dir.display()
        ));
    }
    // Build and assemble before touching the installed plugin: a failed build keeps it.
    let binary = match &plan.binary {
        Some(binary) => binary.clone(),
        None => build_release_binary(workspace)?,
    };
    rootfs::assemble(&binary, &plan.bundle_dir)?;
    if installed {
        // Disabling fails when it is disabled already: fine.
        let _ = run("docker", &["plugin", "disable", "-f", &plan.name]);
        run("docker", &["plugin", "rm", "-f", &plan.name])?;
    }
    for dir in [&plan.state_dir, &plan.cache_dir, &plan.config_dir] {
        // Docker refuses to enable a plugin whose bind-mount source is missing.
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let bundle = plan.bundle_dir.to_string_lossy().into_owned();
    run("docker", &["plugin", "create", &plan.name, &bundle])?;
    let mut set = vec![
        "plugin".to_string(),
        "set".into(),
        plan.name.clone(),
        format!("state.source={}", plan.state_dir.display()),
        format!("cache.source={}", plan.cache_dir.display()),
        format!("config.source={}", plan.config_dir.display()),
    ];
    set.extend(plan.settings.iter().cloned());
    run(
        "docker",
        &set.iter().map(String::as_str).collect::<Vec<_>>(),
    )?;
    let timeout = plan.enable_timeout.map(|t| t.to_string());
    let mut enable = vec!["plugin", "enable"];
    if let Some(t) = &timeout {
        enable.extend(["--timeout", t]);
    }
    enable.push(&plan.name);
    run("docker", &enable)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::shown;

    #[test]
    fn secret_settings_are_hidden_in_messages() {
        assert_eq!(
            shown("AWS_SECRET_ACCESS_KEY=abc"),
            "AWS_SECRET_ACCESS_KEY=***"
        );
        assert_eq!(shown("AWS_ACCESS_KEY_ID=AKIA"), "AWS_ACCESS_KEY_ID=***");
        assert_eq!(
            shown("AWS_ENDPOINT_URL=http://x"),
            "AWS_ENDPOINT_URL=http://x"
        );
        assert_eq!(shown("plugin"), "plugin");
    }
}
