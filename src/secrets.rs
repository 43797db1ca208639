//! Loads secrets from the environment or generates them once into the data
//! directory, so a fresh `cargo run --release` is secure with zero
//! configuration.
//!
//! The file is `<data dir>/secrets.json`, created with mode 0600. Its path is
//! logged; the values never are.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use rand::RngCore as _;
use secrecy::{ExposeSecret as _, SecretString};

use crate::config::{SecretArgs, Secrets};

/// Names of the generated secrets in the file (the environment variable names).
const WHATSAPP_SECRET: &str = "WHATSAPP_WEBHOOK_SECRET";
const WHATSAPP_VERIFY_TOKEN: &str = "WHATSAPP_WEBHOOK_VERIFY_TOKEN";
const AUTH_SECRET: &str = "STATUSHUB_AUTH_SECRET";
const ADMIN_TOKEN: &str = "STATUSHUB_ADMIN_TOKEN";

/// Returns the path of the secrets file in `data_dir`.
pub fn secrets_path(data_dir: &Path) -> PathBuf {
    data_dir.join("secrets.json")
}

/// Returns each secret from `args`, else from the secrets file, else freshly
/// generated (and then written to the file).
pub fn load_or_generate(data_dir: &Path, args: &SecretArgs) -> anyhow::Result<Secrets> {
    let path = secrets_path(data_dir);
    let mut stored = read_file(&path)?;
    let mut generated = Vec::new();
    let mut pick = |name: &'static str, from_env: &Option<SecretString>| -> SecretString {
        if let Some(value) = from_env {
            return value.clone();
        }
        let value = stored.entry(name.to_owned()).or_insert_with(|| {
            generated.push(name);
            random_token()
        });
        SecretString::from(value.clone())
    };
    let secrets = Secrets {
        whatsapp_webhook_secret: pick(WHATSAPP_SECRET, &args.whatsapp_webhook_secret),
        whatsapp_verify_token: pick(WHATSAPP_VERIFY_TOKEN, &args.whatsapp_webhook_verify_token),
        auth_secret: pick(AUTH_SECRET, &args.auth_secret),
        admin_token: pick(ADMIN_TOKEN, &args.admin_token),
    };
    if !generated.is_empty() {
        write_file(data_dir, &path, &stored)?;
        tracing::warn!(
            path = %path.display(),
            generated = ?generated,
            "generated missing secrets and stored them in the data directory"
        );
    } else if !stored.is_empty() {
        tracing::info!(path = %path.display(), "using secrets stored in the data directory");
    }
    Ok(secrets)
}

/// Reads the admin token the way the server would (environment first, then
/// the secrets file), for `statushub simulate`.
pub fn admin_token(data_dir: &Path, from_env: &Option<SecretString>) -> anyhow::Result<String> {
    if let Some(value) = from_env {
        return Ok(value.expose_secret().to_owned());
    }
    read_file(&secrets_path(data_dir))?
        .remove(ADMIN_TOKEN)
        .context("no admin token: start the hub once or set STATUSHUB_ADMIN_TOKEN")
}

/// Reads the Meta app secret the way the server would (environment first,
/// then the secrets file), for `statushub simulate`.
pub fn whatsapp_webhook_secret(
    data_dir: &Path,
    from_env: &Option<SecretString>,
) -> anyhow::Result<String> {
    if let Some(value) = from_env {
        return Ok(value.expose_secret().to_owned());
    }
    read_file(&secrets_path(data_dir))?
        .remove(WHATSAPP_SECRET)
        .context("no whatsapp app secret: start the hub once or set WHATSAPP_WEBHOOK_SECRET")
}

fn read_file(path: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("failed to parse secrets file {}", path.display())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(error) => {
            Err(error).with_context(|| format!("failed to read secrets file {}", path.display()))
        }
    }
}

fn write_file(
    data_dir: &Path,
    path: &Path,
    secrets: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("failed to create data directory {}", data_dir.display()))?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("failed to open secrets file {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    let json = serde_json::to_vec_pretty(secrets)?;
    file.write_all(&json)?;
    file.sync_all()?;
    Ok(())
}

/// Returns 32 random bytes as hex, from the OS generator.
fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}
