//! Loads secrets from the environment or generates them once into the data
//! directory, so a fresh `cargo run --release` is secure with zero
//! configuration.
//!
//! The file is `<data dir>/secrets.json`, mode 0600, written atomically
//! (temporary file, fsync, rename, fsync of the directory), so a crash
//! mid-write leaves the old file or the new one, never a torn one. Its path
//! is logged; the values never are. Like ssh with a private key, statushub
//! refuses a secrets file that its group or others may read.
//!
//! Every secret, whether from the environment or the file, must be strong
//! enough for what it protects, or statushub refuses to start and names the
//! variable: see [`check_secrets`].

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;
use rand::RngCore as _;
use secrecy::{ExposeSecret as _, SecretString};

/// Secrets: each may come from the environment; a missing one is generated
/// once and kept in the data directory.
#[derive(Args, Clone, Debug, Default)]
pub struct SecretArgs {
    /// Meta app secret for X-Hub-Signature-256.
    #[arg(long, env = "WHATSAPP_WEBHOOK_SECRET", hide_env_values = true)]
    pub whatsapp_webhook_secret: Option<SecretString>,

    /// Token Meta sends on the GET verification request.
    #[arg(long, env = "WHATSAPP_WEBHOOK_VERIFY_TOKEN", hide_env_values = true)]
    pub whatsapp_webhook_verify_token: Option<SecretString>,

    /// Key that signs API and subscriber tokens.
    #[arg(long, env = "STATUSHUB_AUTH_SECRET", hide_env_values = true)]
    pub auth_secret: Option<SecretString>,

    /// Bearer token for the admin, debug and ops endpoints.
    #[arg(long, env = "STATUSHUB_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<SecretString>,
}

/// The secrets every running hub has, from the environment or generated.
#[derive(Clone, Debug)]
pub struct Secrets {
    pub whatsapp_webhook_secret: SecretString,
    pub whatsapp_verify_token: SecretString,
    pub auth_secret: SecretString,
    pub admin_token: SecretString,
}

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
    check_secrets(&secrets).with_context(|| {
        format!(
            "a secret from the environment or from {} is too weak",
            path.display()
        )
    })?;
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

/// Least length, in bytes, of the key that signs tokens: HS256 needs a key
/// at least as long as its hash (RFC 7518, section 3.2).
pub const MIN_AUTH_SECRET_BYTES: usize = 32;
/// Least length, in characters, of the admin token.
pub const MIN_ADMIN_TOKEN_CHARS: usize = 16;

/// Refuses secrets too weak for what they protect, naming the variable: the
/// token-signing key under 32 bytes, the admin token under 16 characters, an
/// empty (or blank) WhatsApp app secret or verify token.
pub fn check_secrets(secrets: &Secrets) -> anyhow::Result<()> {
    check_length(
        AUTH_SECRET,
        &secrets.auth_secret,
        secrets.auth_secret.expose_secret().len(),
        MIN_AUTH_SECRET_BYTES,
        "bytes",
    )?;
    check_length(
        ADMIN_TOKEN,
        &secrets.admin_token,
        secrets.admin_token.expose_secret().chars().count(),
        MIN_ADMIN_TOKEN_CHARS,
        "characters",
    )?;
    check_length(WHATSAPP_SECRET, &secrets.whatsapp_webhook_secret, 1, 1, "")?;
    check_length(
        WHATSAPP_VERIFY_TOKEN,
        &secrets.whatsapp_verify_token,
        1,
        1,
        "",
    )?;
    Ok(())
}

/// Refuses an empty or blank `SES_WEBHOOK_SECRET` (it is optional, but when
/// set it must protect something).
pub fn check_ses_webhook_secret(secret: &SecretString) -> anyhow::Result<()> {
    check_length("SES_WEBHOOK_SECRET", secret, 1, 1, "")
}

fn check_length(
    name: &str,
    secret: &SecretString,
    length: usize,
    least: usize,
    unit: &str,
) -> anyhow::Result<()> {
    if secret.expose_secret().trim().is_empty() {
        anyhow::bail!(
            "{name} is set but empty: set a real value or unset it to have one generated"
        );
    }
    if length < least {
        anyhow::bail!("{name} is too short: it must be at least {least} {unit}");
    }
    Ok(())
}

fn read_file(path: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    check_private(path)?;
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("failed to parse secrets file {}", path.display())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(error) => {
            Err(error).with_context(|| format!("failed to read secrets file {}", path.display()))
        }
    }
}

/// Fails when the secrets file exists and its group or others may read or
/// write it (a missing file is fine: it will be generated).
fn check_private(path: &Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        match std::fs::metadata(path) {
            Ok(metadata) => {
                let mode = metadata.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    anyhow::bail!(
                        "secrets file {} has mode {mode:04o}: its group or others may read it; \
                         run `chmod 600 {}` (and rotate the secrets if others did read them)",
                        path.display(),
                        path.display()
                    );
                }
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                return Err(error)
                    .with_context(|| format!("failed to read secrets file {}", path.display()));
            }
        }
    }
    Ok(())
}

/// Replaces the secrets file atomically: a temporary file beside it (mode
/// 0600 from creation), fsync, rename over the old one, fsync of the
/// directory. A crash at any point leaves either the old file or the new.
fn write_file(
    data_dir: &Path,
    path: &Path,
    secrets: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    create_private_dir(data_dir)
        .with_context(|| format!("failed to create data directory {}", data_dir.display()))?;
    let temporary = data_dir.join(format!(".secrets.json.{}.tmp", std::process::id()));
    let result = write_new(&temporary, &serde_json::to_vec_pretty(secrets)?)
        .and_then(|()| std::fs::rename(&temporary, path))
        .and_then(|()| std::fs::File::open(data_dir)?.sync_all());
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result.with_context(|| format!("failed to write secrets file {}", path.display()))
}

/// Creates `dir` (and its parents), the directory itself mode 0700.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// Writes `bytes` to a new file at `path`, mode 0600, and syncs it.
fn write_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    #[cfg(unix)]
    {
        // A leftover temporary file from a crash keeps its old mode.
        use std::os::unix::fs::PermissionsExt as _;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(bytes)?;
    file.sync_all()
}

/// Returns 32 random bytes as hex, from the OS generator.
fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn strong() -> Secrets {
        Secrets {
            whatsapp_webhook_secret: SecretString::from("s"),
            whatsapp_verify_token: SecretString::from("v"),
            auth_secret: SecretString::from("k".repeat(32)),
            admin_token: SecretString::from("a".repeat(16)),
        }
    }

    #[test]
    fn generated_secrets_are_private_and_strong() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let secrets = load_or_generate(&data, &SecretArgs::default()).unwrap();
        check_secrets(&secrets).unwrap();
        assert_eq!(mode(&secrets_path(&data)), 0o600);
        assert_eq!(mode(&data), 0o700);
        // Loaded again, the same values.
        let again = load_or_generate(&data, &SecretArgs::default()).unwrap();
        assert_eq!(
            again.admin_token.expose_secret(),
            secrets.admin_token.expose_secret()
        );
    }

    #[test]
    fn weak_secrets_are_refused_naming_the_variable() {
        check_secrets(&strong()).unwrap();
        type Weaken = fn(&mut Secrets);
        let cases: [(&str, Weaken); 6] = [
            (AUTH_SECRET, |s| {
                s.auth_secret = SecretString::from("k".repeat(31))
            }),
            (AUTH_SECRET, |s| {
                s.auth_secret = SecretString::from(" ".repeat(40))
            }),
            (ADMIN_TOKEN, |s| {
                s.admin_token = SecretString::from("é".repeat(15))
            }),
            (ADMIN_TOKEN, |s| s.admin_token = SecretString::from("")),
            (WHATSAPP_SECRET, |s| {
                s.whatsapp_webhook_secret = SecretString::from("")
            }),
            (WHATSAPP_VERIFY_TOKEN, |s| {
                s.whatsapp_verify_token = SecretString::from("\t")
            }),
        ];
        for (name, weaken) in cases {
            let mut secrets = strong();
            weaken(&mut secrets);
            let error = check_secrets(&secrets).unwrap_err().to_string();
            assert!(error.contains(name), "{error}");
        }
        // Sixteen characters, not bytes: multi-byte characters count once.
        let mut secrets = strong();
        secrets.admin_token = SecretString::from("é".repeat(16));
        check_secrets(&secrets).unwrap();
        let error = check_ses_webhook_secret(&SecretString::from(""))
            .unwrap_err()
            .to_string();
        assert!(error.contains("SES_WEBHOOK_SECRET"), "{error}");
    }

    /// The file is replaced, never rewritten in place: a hard link to the
    /// old file (what a reader mid-crash would see) keeps the old content
    /// whole, and no temporary file is left.
    #[test]
    fn the_secrets_file_is_replaced_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let args = SecretArgs {
            admin_token: Some(SecretString::from("a".repeat(16))),
            ..SecretArgs::default()
        };
        load_or_generate(&data, &args).unwrap();
        let path = secrets_path(&data);
        let mut stored = read_file(&path).unwrap();
        stored.remove(AUTH_SECRET);
        write_file(&data, &path, &stored).unwrap();
        let old = std::fs::read(&path).unwrap();
        let link = dir.path().join("old-secrets.json");
        std::fs::hard_link(&path, &link).unwrap();
        let inode = std::fs::metadata(&path).unwrap().ino();

        load_or_generate(&data, &args).unwrap();

        assert_eq!(std::fs::read(&link).unwrap(), old, "old file untouched");
        assert_ne!(
            std::fs::metadata(&path).unwrap().ino(),
            inode,
            "renamed over"
        );
        assert!(read_file(&path).unwrap().contains_key(AUTH_SECRET));
        assert_eq!(mode(&path), 0o600);
        let names: Vec<String> = std::fs::read_dir(&data)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["secrets.json"]);
    }

    #[test]
    fn a_file_others_may_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.json");
        std::fs::write(&path, "{}").unwrap();
        for bad in [0o644, 0o640, 0o604, 0o620, 0o602] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(bad)).unwrap();
            let error = read_file(&path).unwrap_err().to_string();
            assert!(error.contains("chmod 600"), "{bad:o}: {error}");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(read_file(&path).unwrap().is_empty());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert!(read_file(&path).is_ok());
    }
}
