//! Test helpers: start the real `spg99` binary on a free loopback port with a real data
//! directory, talk HTTP to it, and kill it the hard way.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

/// The bootstrap token tests start the server with.
pub const ROOT_TOKEN: &str =
    "spg99_00000000000000aa_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_spg99")
}

/// Each PostgreSQL worker of the test run gets ports of its own, so that tests running side
/// by side never race for one.
pub fn pg_ports() -> String {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let low = 21000 + (n % 160) * 50;
    format!("{low}-{}", low + 49)
}

/// A log filter at the default level that adds one line per request (with its id).
pub const LOG_REQUESTS: &str = "info,spg99::http::request_id=debug";

/// A running `spg99 serve`.
pub struct Server {
    child: Option<Child>,
    pub base: String,
    /// The embedded Gateway's address, when it runs one.
    pub gateway: Option<String>,
    /// Its pooler's address, if it runs one.
    pub pooler: Option<String>,
    /// Its HTTP front door's address (`POST /sql`, WebSockets), if it runs one.
    pub http: Option<String>,
    /// Lines the server printed to stdout before it was ready.
    pub stdout: Vec<String>,
    pub stderr_path: PathBuf,
    agent: ureq::Agent,
}

/// How to start a server.
pub struct Start<'a> {
    pub data_dir: &'a Path,
    pub env: Vec<(&'a str, String)>,
    /// A program (and its arguments) to run the server under, such as strace.
    pub wrapper: Vec<String>,
    pub listen: String,
}

impl<'a> Start<'a> {
    /// A server with no Gateway and no local worker (the tests of the control plane play
    /// them, or say so, with `gateway()` and `compute()`).
    pub fn new(data_dir: &'a Path) -> Self {
        Start {
            data_dir,
            env: vec![
                ("SPG99_BOOTSTRAP_TOKEN", ROOT_TOKEN.to_owned()),
                ("SPG99_GATEWAY_LISTEN", "none".to_owned()),
                ("SPG99_POOLER_LISTEN", "127.0.0.1:0".to_owned()),
                ("SPG99_HTTP_LISTEN", "127.0.0.1:0".to_owned()),
                ("SPG99_COMPUTE", "none".to_owned()),
                // The abuse limits are tested in limits.rs; elsewhere a test's own bursts of
                // refused tokens and requests must not meet them.
                ("SPG99_LIMIT_AUTH_FAILURES_PER_ADDRESS", "0".to_owned()),
                ("SPG99_LIMIT_AUTH_FAILURES_PER_KEY", "0".to_owned()),
                ("SPG99_LIMIT_REQUESTS_PER_KEY", "0".to_owned()),
                ("SPG99_LIMIT_STREAMS_PER_KEY", "0".to_owned()),
                ("SPG99_LIMIT_TICKETS_PER_KEY", "0".to_owned()),
            ],
            wrapper: Vec::new(),
            listen: "127.0.0.1:0".into(),
        }
    }

    /// On this HTTP address (a restart where the clients expect the same one).
    pub fn listen(mut self, addr: &str) -> Self {
        self.listen = addr.to_owned();
        self
    }

    /// With the embedded Gateway on a free port (its address in `Server::gateway`).
    pub fn gateway(self) -> Self {
        self.env("SPG99_GATEWAY_LISTEN", "127.0.0.1:0")
    }

    /// With the local worker running `kind` (`postgres` or `simulated`); for PostgreSQL the
    /// directories above the data directory are made reachable for the postgres user, and
    /// its servers get ports of their own.
    pub fn compute(self, kind: &str) -> Self {
        let mut s = self;
        if kind == "postgres" {
            use std::os::unix::fs::PermissionsExt;
            let tmp = std::env::temp_dir();
            let mut at = s.data_dir.to_path_buf();
            while at.pop() && at.starts_with(&tmp) && at != tmp {
                std::fs::set_permissions(&at, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
            s = s.env("SPG99_PORT_RANGE", pg_ports());
        }
        s.env("SPG99_COMPUTE", kind)
    }

    pub fn env(mut self, k: &'a str, v: impl Into<String>) -> Self {
        self.env.retain(|(name, _)| *name != k);
        self.env.push((k, v.into()));
        self
    }

    pub fn under(mut self, wrapper: &[&str]) -> Self {
        self.wrapper = wrapper.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn without_env(mut self, k: &str) -> Self {
        self.env.retain(|(name, _)| *name != k);
        self
    }

    fn command(&self) -> (Command, PathBuf) {
        let stderr_path = self.data_dir.with_extension(format!(
            "stderr.{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let mut cmd = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(bin());
                c
            }
            None => Command::new(bin()),
        };
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(self.data_dir)
            .arg("--listen")
            .arg(&self.listen)
            .env_remove("SPG99_BOOTSTRAP_TOKEN")
            .env_remove("SPG99_SERVICE_TOKEN")
            .env_remove("SPG99_LOG_FORMAT")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path).unwrap());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        (cmd, stderr_path)
    }

    /// Starts the server and waits until it listens.
    pub fn spawn(self) -> Server {
        let (mut cmd, stderr_path) = self.command();
        let mut child = cmd.spawn().expect("spawn spg99");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut lines = Vec::new();
        let mut gateway = None;
        let mut pooler = None;
        let mut http = None;
        loop {
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(line) => {
                    let addr = line.strip_prefix("spg99 listening on ").map(str::to_owned);
                    if let Some(g) = line.strip_prefix("spg99 gateway listening on ") {
                        gateway = Some(g.to_owned());
                    }
                    if let Some(p) = line.strip_prefix("spg99 gateway pooler listening on ") {
                        pooler = Some(p.to_owned());
                    }
                    if let Some(h) = line.strip_prefix("spg99 gateway http listening on ") {
                        http = Some(h.to_owned());
                    }
                    lines.push(line);
                    if let Some(base) = addr {
                        return Server {
                            child: Some(child),
                            base,
                            gateway,
                            pooler,
                            http,
                            stdout: lines,
                            stderr_path,
                            agent: ureq::AgentBuilder::new()
                                .timeout(Duration::from_secs(30))
                                .build(),
                        };
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let status = child.wait().unwrap();
                    panic!(
                        "server did not start ({status}); stdout {lines:?}; stderr:\n{}",
                        std::fs::read_to_string(&stderr_path).unwrap_or_default()
                    );
                }
            }
        }
    }

    /// Runs the server expecting it to refuse to start; returns its exit status and stderr.
    pub fn run_to_failure(self) -> (ExitStatus, String) {
        let (mut cmd, stderr_path) = self.command();
        let mut child = cmd.spawn().expect("spawn spg99");
        for _ in 0..600 {
            if let Some(status) = child.try_wait().unwrap() {
                return (status, std::fs::read_to_string(&stderr_path).unwrap());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        panic!("server was expected to refuse to start but kept running");
    }
}

/// One HTTP answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub headers: Vec<(String, String)>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

fn reply(resp: ureq::Response) -> Reply {
    let status = resp.status();
    let headers = resp
        .headers_names()
        .into_iter()
        .map(|n| {
            let v = resp.header(&n).unwrap_or("").to_owned();
            (n, v)
        })
        .collect();
    let text = resp.into_string().unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Reply {
        status,
        body,
        headers,
    }
}

impl Server {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Sends a request; transport errors (server gone) are `Err`.
    pub fn try_call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Reply, String> {
        self.try_call_with(method, path, token, body, &[])
    }

    /// [`Server::try_call`] with more headers.
    pub fn try_call_with(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Result<Reply, String> {
        let mut req = self.agent.request(method, &self.url(path));
        for (name, value) in headers {
            req = req.set(name, value);
        }
        if let Some(t) = token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        let result = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        match result {
            Ok(resp) | Err(ureq::Error::Status(_, resp)) => Ok(reply(resp)),
            Err(e) => Err(e.to_string()),
        }
    }

    pub fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Reply {
        self.try_call(method, path, token, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    pub fn get(&self, path: &str, token: &str) -> Reply {
        self.call("GET", path, Some(token), None)
    }

    pub fn post(&self, path: &str, token: &str, body: Value) -> Reply {
        self.call("POST", path, Some(token), Some(&body))
    }

    /// Every account, paging through `GET /v2/accounts` `limit` at a time.
    pub fn accounts(&self, limit: usize) -> Vec<Value> {
        let mut all = Vec::new();
        let mut path = format!("/v2/accounts?limit={limit}");
        loop {
            let r = self.get(&path, ROOT_TOKEN);
            assert_eq!(r.status, 200, "{r:?}");
            all.extend(r.body["items"].as_array().unwrap().iter().cloned());
            match r.body["next_cursor"].as_str() {
                Some(c) => path = format!("/v2/accounts?limit={limit}&cursor={c}"),
                None => return all,
            }
        }
    }

    /// The live server's state fingerprint and head seq.
    pub fn fingerprint(&self) -> (String, u64) {
        let r = self.get("/v2/admin/state", ROOT_TOKEN);
        assert_eq!(r.status, 200, "{r:?}");
        (
            r.body["fingerprint"].as_str().unwrap().to_owned(),
            r.body["seq"].as_u64().unwrap(),
        )
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The server's log as of now: every line it wrote before it answered a request sent
    /// now, marked with that request's id (a request's lines are written before its answer).
    /// The server must log requests ([`LOG_REQUESTS`]).
    pub fn log_as_of_now(&self) -> String {
        static N: AtomicU16 = AtomicU16::new(0);
        let mark = format!("log-mark-{}", N.fetch_add(1, Ordering::Relaxed));
        let r = self
            .try_call_with("GET", "/healthz", None, None, &[("X-Request-Id", &mark)])
            .unwrap();
        assert_eq!(r.status, 200);
        let log = self.stderr();
        assert!(
            log.contains(&mark),
            "the marked request is not in the log: start the server with RUST_LOG={LOG_REQUESTS}"
        );
        log
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM, then wait for the process to exit; returns how long that took.
    pub fn terminate(&mut self) -> (ExitStatus, Duration) {
        let mut c = self.child.take().expect("running");
        let started = std::time::Instant::now();
        let ok = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status()
            .unwrap();
        assert!(ok.success());
        let status = c.wait().unwrap();
        (status, started.elapsed())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Reads with `read` every 50 ms until `done` accepts the reading, at most `secs` seconds;
/// that reading.
pub fn until_value(secs: u64, read: impl Fn() -> Value, done: impl Fn(&Value) -> bool) -> Value {
    let began = std::time::Instant::now();
    loop {
        let v = read();
        if done(&v) {
            return v;
        }
        assert!(
            began.elapsed() < Duration::from_secs(secs),
            "gave up waiting: {v}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("spg99-test-")
        .tempdir()
        .unwrap()
}

/// A platform with one account and what a test usually needs in it.
pub struct Fixture {
    pub server: Server,
    pub account: String,
    /// An account key of `account` with every permission.
    pub account_key: String,
}

impl Fixture {
    pub fn new(data_dir: &Path) -> Fixture {
        Fixture::with_server(Start::new(data_dir).spawn())
    }

    /// The fixture on a server started elsewhere (with other settings).
    pub fn with_server(server: Server) -> Fixture {
        let account = server.create_account("acme");
        let account_key = server.issue_key(
            ROOT_TOKEN,
            &account,
            serde_json::json!({"scope": "account", "permissions": all_permissions()}),
        );
        Fixture {
            server,
            account,
            account_key,
        }
    }
}

pub fn all_permissions() -> Value {
    serde_json::json!({"can_create_tenant": true, "can_create_db": true, "can_scale": true, "can_delete": true})
}

impl Server {
    /// Creates an account with the root key; returns its id.
    pub fn create_account(&self, name: &str) -> String {
        let r = self.post(
            "/v2/accounts",
            ROOT_TOKEN,
            serde_json::json!({ "name": name }),
        );
        assert_eq!(r.status, 201, "{r:?}");
        r.body["account_id"].as_str().unwrap().to_owned()
    }

    /// Issues a key on `account` with `body`; returns the token.
    pub fn issue_key(&self, token: &str, account: &str, body: Value) -> String {
        let r = self.post(&format!("/v2/accounts/{account}/api-keys"), token, body);
        assert_eq!(r.status, 201, "{r:?}");
        r.body["token"].as_str().unwrap().to_owned()
    }

    pub fn create_tenant(&self, token: &str, name: &str) -> Reply {
        let r = self.post("/v2/tenants", token, serde_json::json!({ "name": name }));
        assert_eq!(r.status, 201, "{r:?}");
        r
    }

    pub fn create_db(&self, token: &str, tenant: &str, name: &str) -> Reply {
        let r = self.post(
            &format!("/v2/tenants/{tenant}/dbs"),
            token,
            serde_json::json!({"name": name, "size": "L1"}),
        );
        assert_eq!(r.status, 201, "{r:?}");
        r
    }

    pub fn delete(&self, path: &str, token: &str) -> Reply {
        self.call("DELETE", path, Some(token), None)
    }

    /// Polls `path` until it answers `status` (asynchronous work), at most ~5 s.
    pub fn wait_for_status(&self, path: &str, token: &str, status: u16) -> Reply {
        for _ in 0..100 {
            let r = self.get(path, token);
            if r.status == status {
                return r;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("{path} never answered {status}");
    }
}

/// Walks `dir` and fails if any file holds any of `secrets` in plaintext.
pub fn assert_no_plaintext(dir: &std::path::Path, secrets: &[&str]) {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let bytes = std::fs::read(&path).unwrap();
            for secret in secrets {
                assert!(
                    !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                    "{} holds a secret in plaintext",
                    path.display()
                );
            }
        }
    }
}

/// One Server-Sent Events frame.
#[derive(Debug, Clone, Default)]
pub struct Frame {
    pub id: Option<String>,
    pub event: String,
    pub data: String,
}

impl Frame {
    pub fn seq(&self) -> u64 {
        self.id
            .as_deref()
            .expect("frame has an id")
            .parse()
            .unwrap()
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap()
    }
}

/// A Server-Sent Events client over a real HTTP connection.
pub struct Events {
    reader: BufReader<Box<dyn std::io::Read + Send + Sync + 'static>>,
}

impl Events {
    /// Opens `path`; `Err` carries the refusal when the server does not start a stream.
    pub fn open(
        s: &Server,
        path: &str,
        token: Option<&str>,
        last_event_id: Option<u64>,
    ) -> Result<Events, Reply> {
        let agent = ureq::AgentBuilder::new()
            .timeout_read(Duration::from_secs(3))
            .build();
        let mut req = agent.get(&s.url(path));
        if let Some(t) = token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        if let Some(id) = last_event_id {
            req = req.set("Last-Event-ID", &id.to_string());
        }
        match req.call() {
            Ok(resp) => {
                assert_eq!(resp.content_type(), "text/event-stream");
                Ok(Events {
                    reader: BufReader::new(resp.into_reader()),
                })
            }
            Err(ureq::Error::Status(_, resp)) => Err(reply(resp)),
            Err(e) => panic!("{e}"),
        }
    }

    /// The next frame (comments and `retry:` skipped); `None` when nothing came for 3 s.
    pub fn next(&mut self) -> Option<Frame> {
        let mut frame = Frame::default();
        let mut any = false;
        loop {
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                if any {
                    return Some(frame);
                }
                continue;
            }
            if let Some(v) = line.strip_prefix("id: ") {
                frame.id = Some(v.to_owned());
                any = true;
            } else if let Some(v) = line.strip_prefix("event: ") {
                frame.event = v.to_owned();
                any = true;
            } else if let Some(v) = line.strip_prefix("data: ") {
                frame.data.push_str(v);
                any = true;
            }
        }
    }

    /// The next frame that is not a bookmark.
    pub fn next_event(&mut self) -> Option<Frame> {
        loop {
            let f = self.next()?;
            if f.event != "bookmark" {
                return Some(f);
            }
        }
    }

    /// Events (not bookmarks) until one with seq `last` was seen.
    pub fn until_seq(&mut self, last: u64) -> Vec<Frame> {
        let mut out = Vec::new();
        loop {
            let f = self.next().unwrap_or_else(|| {
                panic!("stream went quiet before seq {last}; got {}", out.len())
            });
            let done =
                f.id.as_deref()
                    .is_some_and(|id| id.parse::<u64>().unwrap() >= last);
            if f.event != "bookmark" {
                out.push(f);
            }
            if done {
                return out;
            }
        }
    }
}

/// Rewrites the raw record `seq` where it is stored, inside its frame (what bit rot or a
/// foreign writer would do); an empty result removes the record.
pub fn tamper(dir: &std::path::Path, seq: u64, f: impl FnOnce(&mut Vec<u8>)) {
    use spg99::log::{join_frame, split_frame};
    // Opening the log puts back into sled what only the WAL held; then sled is the whole log.
    drop(spg99::log::Log::open(dir).unwrap());
    let db = sled::open(dir).unwrap();
    let tree = db.open_tree("log").unwrap();
    let (key, value) = tree
        .range(..=seq.to_be_bytes())
        .next_back()
        .expect("a frame holds the seq")
        .unwrap();
    let first = u64::from_be_bytes(key.as_ref().try_into().unwrap());
    let mut records: Vec<Vec<u8>> = split_frame(&value)
        .unwrap()
        .into_iter()
        .map(|r| value[r].to_vec())
        .collect();
    let index = (seq - first) as usize;
    assert!(index < records.len(), "no record {seq}");
    f(&mut records[index]);
    if records[index].is_empty() {
        records.remove(index);
        if index == 0 {
            tree.remove(key).unwrap();
            if !records.is_empty() {
                tree.insert((seq + 1).to_be_bytes(), join_frame(&records))
                    .unwrap();
            }
        } else {
            tree.insert(key, join_frame(&records)).unwrap();
        }
    } else {
        tree.insert(key, join_frame(&records)).unwrap();
    }
    db.flush().unwrap();
}
