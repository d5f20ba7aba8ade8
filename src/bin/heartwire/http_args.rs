//! The `heartwire serve` flags of the HTTP API, flattened into
//! [`ServeArgs`](crate::serve_args::ServeArgs). Each is also read from its `HEARTWIRE_*`
//! variable. API keys are best given in a file (`--api-key-file`) or the environment, since
//! flags show in process listings; they never show in `--help`, logs or debug output.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

use heartwire::http::HttpConfig;

use crate::serve_args::{overlay, overlay_some};

/// HTTP API options of `heartwire serve`.
#[derive(Clone, Default, Args)]
pub struct HttpArgs {
    /// Serve the HTTP API (push, monitoring, /metrics) on this address; off when not given.
    #[arg(long = "http", env = "HEARTWIRE_HTTP", value_name = "ADDR")]
    pub http: Option<SocketAddr>,
    /// Require `Authorization: Bearer KEY` on /api/* (prefer --api-key-file or
    /// HEARTWIRE_API_KEY: flags show in process listings). Keys given by flag, environment or
    /// key file replace those of the config file.
    #[arg(
        long,
        env = "HEARTWIRE_API_KEY",
        value_name = "KEY",
        hide_env_values = true
    )]
    pub api_key: Option<String>,
    /// Read API keys from this file, one per line (blank lines and `#` comments skipped), at
    /// start; all are accepted at once, to rotate keys without failing clients.
    #[arg(
        long,
        env = "HEARTWIRE_API_KEY_FILE",
        value_name = "PATH",
        value_parser = read_key_file
    )]
    pub api_key_file: Option<KeyFile>,
    /// Serve the HTTP API without an API key on a non-loopback address.
    #[arg(long, env = "HEARTWIRE_HTTP_ALLOW_INSECURE")]
    pub http_allow_insecure: bool,
    /// Serve the HTTP API over TLS with --tls-cert and --tls-key.
    #[arg(long, env = "HEARTWIRE_HTTP_TLS")]
    pub http_tls: bool,
    /// Host names (or addresses, `:port` optional) the HTTP API answers besides loopback ones,
    /// comma-separated; without a key, /api/* refuses any other Host (DNS rebinding).
    #[arg(
        long,
        env = "HEARTWIRE_HTTP_ALLOWED_HOSTS",
        value_name = "HOSTS",
        value_delimiter = ','
    )]
    pub http_allowed_hosts: Option<Vec<String>>,
    /// Web origins (`https://admin.example.com`) allowed to call /api/* from a browser,
    /// comma-separated; none by default (no CORS headers).
    #[arg(
        long,
        env = "HEARTWIRE_HTTP_CORS_ORIGINS",
        value_name = "ORIGINS",
        value_delimiter = ','
    )]
    pub http_cors_origins: Option<Vec<String>>,
}

/// The keys of an `--api-key-file`. Its `Debug` names the file, never a key.
#[derive(Clone)]
pub struct KeyFile {
    path: PathBuf,
    keys: Vec<String>,
}

impl fmt::Debug for KeyFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "KeyFile({}, <{} redacted>)",
            self.path.display(),
            self.keys.len()
        )
    }
}

/// Reads a key file for clap, which names the flag and the path in any error; the error
/// never quotes the file's content.
fn read_key_file(path: &str) -> Result<KeyFile, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}"))?;
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if !line.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "line {}: a key must be printable ASCII without spaces",
                n + 1
            ));
        }
        keys.push(line.to_owned());
    }
    if keys.is_empty() {
        return Err("no key in it (blank lines and `#` comments do not count)".into());
    }
    Ok(KeyFile {
        path: path.into(),
        keys,
    })
}

impl fmt::Debug for HttpArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpArgs")
            .field("http", &self.http)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("api_key_file", &self.api_key_file)
            .field("http_allow_insecure", &self.http_allow_insecure)
            .field("http_tls", &self.http_tls)
            .field("http_allowed_hosts", &self.http_allowed_hosts)
            .field("http_cors_origins", &self.http_cors_origins)
            .finish()
    }
}

impl HttpArgs {
    /// Lays the given options over `config`. Keys from `--api-key` and `--api-key-file`
    /// (together) replace the config file's `api_key` and `api_keys`.
    pub fn apply(&self, config: &mut HttpConfig) {
        overlay_some(&mut config.listen, &self.http);
        let file_keys = self.api_key_file.iter().flat_map(|f| f.keys.iter());
        let keys: Vec<String> = self.api_key.iter().chain(file_keys).cloned().collect();
        if !keys.is_empty() {
            config.api_key = None;
            config.api_keys = keys;
        }
        if self.http_allow_insecure {
            config.allow_insecure = true;
        }
        if self.http_tls {
            config.tls = true;
        }
        overlay(&mut config.allowed_hosts, &self.http_allowed_hosts);
        overlay(&mut config.cors_origins, &self.http_cors_origins);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_keys_replace_the_config_files() {
        let mut config = HttpConfig {
            api_key: Some("file-single".into()),
            api_keys: vec!["file-listed".into()],
            ..HttpConfig::default()
        };
        HttpArgs::default().apply(&mut config);
        assert_eq!(config.api_key.as_deref(), Some("file-single"));
        assert_eq!(config.api_keys, ["file-listed"]);

        let args = HttpArgs {
            api_key: Some("flag-key".into()),
            api_key_file: Some(KeyFile {
                path: "keys".into(),
                keys: vec!["key-file-1".into(), "key-file-2".into()],
            }),
            ..HttpArgs::default()
        };
        args.apply(&mut config);
        assert_eq!(config.api_key, None);
        assert_eq!(config.api_keys, ["flag-key", "key-file-1", "key-file-2"]);
        let debug = format!("{args:?}");
        assert!(
            !debug.contains("flag-key") && !debug.contains("key-file-"),
            "{debug}"
        );
    }

    #[test]
    fn key_files_skip_comments_and_blank_lines() {
        let path = std::env::temp_dir().join(format!("heartwire-keyfile-{}", std::process::id()));
        std::fs::write(&path, "# old one first\r\nold-key\r\n\r\n\t new-key \n").unwrap();
        let file = read_key_file(path.to_str().unwrap());
        std::fs::remove_file(&path).unwrap();
        assert_eq!(file.unwrap().keys, ["old-key", "new-key"]);
    }
}
