//! Where the client's URL and token come from: `--url` and `SPG99_URL`, `SPG99_TOKEN`, then
//! the profile (`--profile`, `SPG99_PROFILE`, else the one `login` saved last) in
//! `$SPG99_CONFIG`, else `$XDG_CONFIG_HOME/spg99/config.json`, else
//! `~/.config/spg99/config.json`. The file holds tokens: it is written 0600 (a directory made
//! for it, 0700), whole, to a temporary file then renamed, so it is never seen half written.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ClientError;

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The profile used when none is named.
    #[serde(default)]
    pub default: Option<String>,
    #[serde(default)]
    pub profiles: BTreeMap<String, Profile>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub url: String,
    pub token: String,
}

/// The config file's path.
pub fn path() -> Result<PathBuf, ClientError> {
    let env = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(p) = env("SPG99_CONFIG") {
        return Ok(PathBuf::from(p));
    }
    let base = match (env("XDG_CONFIG_HOME"), env("HOME")) {
        (Some(x), _) => PathBuf::from(x),
        (None, Some(h)) => PathBuf::from(h).join(".config"),
        (None, None) => {
            return Err(ClientError::Usage(
                "no HOME, XDG_CONFIG_HOME or SPG99_CONFIG: nowhere to keep the config".into(),
            ))
        }
    };
    Ok(base.join("spg99").join("config.json"))
}

impl Config {
    /// The config file's content; empty when there is none.
    pub fn load() -> Result<Config, ClientError> {
        let path = path()?;
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                ClientError::Local(format!("{} is not a valid config: {e}", path.display()))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            Err(e) => Err(ClientError::Local(format!("{}: {e}", path.display()))),
        }
    }

    pub fn save(&self) -> Result<PathBuf, ClientError> {
        let path = path()?;
        let local = |e: std::io::Error| ClientError::Local(format!("{}: {e}", path.display()));
        // A directory made here is this file's alone (0700); one that exists is left as it is
        // (SPG99_CONFIG may name a file in any directory).
        if let Some(dir) = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty() && !d.exists())
        {
            std::fs::create_dir_all(dir).map_err(local)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(local)?;
        }
        let tmp = path.with_extension("json.tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(local)?;
        let text = serde_json::to_string_pretty(self).expect("a config serializes");
        file.write_all(text.as_bytes()).map_err(local)?;
        file.sync_all().map_err(local)?;
        std::fs::rename(&tmp, &path).map_err(local)?;
        Ok(path)
    }

    /// The profile `name` names, or the default one.
    pub fn profile(&self, name: Option<&str>) -> Option<(&str, &Profile)> {
        let name = name.or(self.default.as_deref())?;
        self.profiles
            .get_key_value(name)
            .map(|(k, p)| (k.as_str(), p))
    }
}
