//! The storage repository: where every database's data is kept outside the workers, by
//! pgBackRest. The control plane is given it (`spg99 serve --storage`) and hands it to every
//! worker when it registers ([`Storage`]); the keys of an object store never travel with it
//! (each process reads them from its own environment).
//!
//! Written as a path (a directory: `/srv/spg99/storage`) or as
//! `s3://BUCKET/PREFIX?endpoint=https://HOST:PORT&region=R&ca=PEM-PATH`: an S3-compatible
//! object store reached over HTTPS at a DNS name (pgBackRest 2.45 speaks S3 over HTTPS only,
//! and refuses an IP address as the endpoint even with an IP in the certificate), path-style,
//! its bucket made beforehand.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// What a worker is told about the repository when it registers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Storage {
    /// The repository, as [`Repository`] writes it.
    pub repository: String,
    /// A writing database's WAL is archived at least this often (seconds).
    pub archive_timeout_secs: u64,
    /// Every point of a database's history this far back can be restored (seconds).
    pub history_window_secs: u64,
}

/// Where the repository is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Repository {
    /// A directory (absolute).
    Posix(PathBuf),
    S3(S3),
}

/// An S3-compatible object store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3 {
    pub bucket: String,
    /// The repository's path inside the bucket, `/`-led (`/` for the whole bucket).
    pub prefix: String,
    /// The endpoint's DNS name and port (HTTPS).
    pub host: String,
    pub port: u16,
    pub region: String,
    /// The authority (PEM) the endpoint's certificate is checked against, if not a public one.
    pub ca: Option<PathBuf>,
}

impl Repository {
    /// Reads `s3://...` or a path; a relative path is taken from the current directory.
    pub fn parse(raw: &str) -> Result<Repository, String> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err("the storage repository is empty: give a directory or an s3:// URL".into());
        }
        let Some(rest) = raw.strip_prefix("s3://") else {
            let path = std::path::absolute(raw).map_err(|e| format!("{raw}: {e}"))?;
            return Ok(Repository::Posix(path));
        };
        let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (bucket, prefix) = location.split_once('/').unwrap_or((location, ""));
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !bucket_ok {
            return Err(format!(
                "{raw}: the bucket must be 3 to 63 lowercase letters, digits, '-' or '.'"
            ));
        }
        let mut endpoint = None;
        let mut region = None;
        let mut ca = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "endpoint" => endpoint = Some(value),
                "region" => region = Some(value.to_owned()),
                "ca" => ca = Some(PathBuf::from(value)),
                other => {
                    return Err(format!(
                        "{raw}: unknown parameter {other:?} (endpoint, region, ca)"
                    ))
                }
            }
        }
        let endpoint =
            endpoint.ok_or_else(|| format!("{raw}: endpoint=https://HOST:PORT is required"))?;
        let hostport = endpoint.strip_prefix("https://").ok_or_else(|| {
            format!("{raw}: the endpoint must be https:// (pgBackRest speaks S3 over HTTPS only)")
        })?;
        let hostport = hostport.trim_end_matches('/');
        let (host, port) = match hostport.rsplit_once(':') {
            Some((host, port)) => (
                host,
                port.parse::<u16>()
                    .map_err(|_| format!("{raw}: the endpoint's port {port:?} is not a port"))?,
            ),
            None => (hostport, 443),
        };
        let dns_name = !host.is_empty()
            && host.parse::<std::net::IpAddr>().is_err()
            && !host.starts_with('[')
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if !dns_name {
            return Err(format!(
                "{raw}: the endpoint must be a DNS name (pgBackRest refuses an IP address \
                 there): `localhost` on one machine"
            ));
        }
        let prefix = format!("/{}", prefix.trim_matches('/'));
        Ok(Repository::S3(S3 {
            bucket: bucket.to_owned(),
            prefix,
            host: host.to_owned(),
            port,
            region: region.unwrap_or_else(|| "us-east-1".to_owned()),
            ca,
        }))
    }
}

impl fmt::Display for Repository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Repository::Posix(path) => write!(f, "{}", path.display()),
            Repository::S3(s3) => {
                write!(
                    f,
                    "s3://{}{}?endpoint=https://{}:{}&region={}",
                    s3.bucket,
                    if s3.prefix == "/" { "" } else { &s3.prefix },
                    s3.host,
                    s3.port,
                    s3.region
                )?;
                if let Some(ca) = &s3.ca {
                    write!(f, "&ca={}", ca.display())?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_s3_repository_reads_back_as_itself() {
        let raw =
            "s3://spg99-repo/prod/eu?endpoint=https://s3.local:8333&region=eu-1&ca=/etc/ca.pem";
        let r = Repository::parse(raw).unwrap();
        assert_eq!(
            r,
            Repository::S3(S3 {
                bucket: "spg99-repo".into(),
                prefix: "/prod/eu".into(),
                host: "s3.local".into(),
                port: 8333,
                region: "eu-1".into(),
                ca: Some("/etc/ca.pem".into()),
            })
        );
        assert_eq!(r.to_string(), raw);
        assert_eq!(Repository::parse(&r.to_string()).unwrap(), r);
        let bare = Repository::parse("s3://bucket?endpoint=https://localhost:9000").unwrap();
        assert_eq!(
            bare.to_string(),
            "s3://bucket?endpoint=https://localhost:9000&region=us-east-1"
        );
    }

    #[test]
    fn what_pgbackrest_would_refuse_is_refused_with_the_reason() {
        for (raw, says) in [
            ("s3://bucket?endpoint=https://127.0.0.1:9000", "DNS name"),
            ("s3://bucket?endpoint=http://localhost:9000", "https"),
            ("s3://bucket", "endpoint"),
            ("s3://Bucket?endpoint=https://localhost", "bucket"),
            (
                "s3://bucket?endpoint=https://localhost&key=x",
                "unknown parameter",
            ),
            ("", "empty"),
        ] {
            let e = Repository::parse(raw).unwrap_err();
            assert!(e.contains(says), "{raw}: {e}");
        }
        assert!(matches!(
            Repository::parse("/srv/storage").unwrap(),
            Repository::Posix(p) if p == std::path::Path::new("/srv/storage")
        ));
    }
}
