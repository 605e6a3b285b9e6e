//! `spg99` as a client of API v2: `login` and profiles, resources as tables for people or
//! JSON for scripts, the event stream followed across dropped connections, `--wait` on what
//! settles later, and `connect` (psql with the right DSN). The commands are in
//! [`commands`]; how they look, in [`render`]; where the URL and token come from, in
//! [`profile`].
//!
//! Every mutation carries an `Idempotency-Key`, so a request whose answer was lost (a dropped
//! connection, a 503 while a replica takes over) is sent again with the same key: the API
//! answers it from the first answer's record if it was done, and does it if not — never twice.

pub mod commands;
pub mod profile;
pub mod render;

use std::io::Read;
use std::time::Duration;

use serde_json::Value;

/// How often a mutation is sent again after a lost answer or a 503.
const RETRIES: u32 = 4;

/// Why a command failed, with the exit code it gives (docs/cli.md).
#[derive(Debug)]
pub enum ClientError {
    /// Bad arguments, or nothing configured to talk to.
    Usage(String),
    /// The API refused the request.
    Api {
        status: u16,
        code: String,
        message: String,
        request_id: Option<String>,
    },
    /// The server could not be reached, or its answer was not the API's.
    Transport(String),
    /// `--wait` gave up, or what it waited for failed.
    Wait(String),
    /// A local program or file failed (psql, the config file).
    Local(String),
}

impl ClientError {
    /// 2 usage, 3 unauthenticated, 4 forbidden, 5 not found, 6 conflict, 7 invalid, 8
    /// unavailable or unreachable, 9 a wait that did not settle, 1 anything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            ClientError::Usage(_) => 2,
            ClientError::Api { status, .. } => match status {
                401 => 3,
                403 => 4,
                404 => 5,
                409 => 6,
                400 | 405 | 413 | 415 | 422 => 7,
                429 | 503 => 8,
                _ => 1,
            },
            ClientError::Transport(_) => 8,
            ClientError::Wait(_) => 9,
            ClientError::Local(_) => 1,
        }
    }
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Usage(m) | ClientError::Wait(m) | ClientError::Local(m) => f.write_str(m),
            ClientError::Transport(m) => write!(f, "cannot reach the API: {m}"),
            ClientError::Api {
                status,
                code,
                message,
                request_id,
            } => {
                write!(f, "{message} ({status} {code}")?;
                if let Some(id) = request_id {
                    write!(f, ", request {id}")?;
                }
                f.write_str(")")
            }
        }
    }
}

/// An answer: its body and the seq it reflects.
pub struct Answer {
    pub body: Value,
    pub version: Option<u64>,
}

/// The API at `base`, called with `token`.
pub struct Api {
    pub base: String,
    pub token: String,
    agent: ureq::Agent,
}

impl Api {
    pub fn new(base: &str, token: &str) -> Api {
        Api {
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            agent: ureq::AgentBuilder::new()
                .timeout_connect(Duration::from_secs(10))
                .timeout(Duration::from_secs(60))
                .build(),
        }
    }

    pub fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.call("GET", path, None).map(|a| a.body)
    }

    /// Sends a request; a mutation with an `Idempotency-Key`, sent again (with the same key)
    /// while its answer is lost or the API is unavailable for a moment.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Answer, ClientError> {
        let key = (method != "GET").then(|| uuid::Uuid::new_v4().to_string());
        let mut tries = 0;
        loop {
            tries += 1;
            let mut req = self
                .agent
                .request(method, &format!("{}{path}", self.base))
                .set("Authorization", &format!("Bearer {}", self.token));
            if let Some(k) = &key {
                req = req.set("Idempotency-Key", k);
            }
            let res = match body {
                Some(b) => req.send_json(b),
                None if key.is_some() => req.send_bytes(b""),
                None => req.call(),
            };
            let again = tries <= RETRIES && (key.is_some() || method == "GET");
            match res {
                Ok(resp) => return answer(resp),
                Err(ureq::Error::Status(503, _)) | Err(ureq::Error::Transport(_)) if again => {
                    std::thread::sleep(Duration::from_millis(100 << tries));
                }
                Err(ureq::Error::Status(_, resp)) => return Err(refusal(resp)),
                Err(ureq::Error::Transport(t)) => {
                    return Err(ClientError::Transport(t.to_string()))
                }
            }
        }
    }

    /// Opens the event stream at `path` (`/v2/events?...`), resuming after `last`.
    pub fn stream(
        &self,
        path: &str,
        last: Option<u64>,
    ) -> Result<Box<dyn Read + Send>, ClientError> {
        let mut req = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(10))
            // Bookmarks come every few seconds: a longer silence is a dead connection.
            .timeout_read(Duration::from_secs(60))
            .build()
            .get(&format!("{}{path}", self.base))
            .set("Authorization", &format!("Bearer {}", self.token))
            .set("Accept", "text/event-stream");
        if let Some(seq) = last {
            req = req.set("Last-Event-ID", &seq.to_string());
        }
        match req.call() {
            Ok(resp) => Ok(Box::new(resp.into_reader())),
            Err(ureq::Error::Status(_, resp)) => Err(refusal(resp)),
            Err(ureq::Error::Transport(t)) => Err(ClientError::Transport(t.to_string())),
        }
    }
}

fn answer(resp: ureq::Response) -> Result<Answer, ClientError> {
    let version = resp
        .header("x-resource-version")
        .and_then(|v| v.parse().ok());
    let text = resp
        .into_string()
        .map_err(|e| ClientError::Transport(e.to_string()))?;
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text)
            .map_err(|e| ClientError::Transport(format!("an answer that is not JSON: {e}")))?
    };
    Ok(Answer { body, version })
}

/// The API's error, as it gave it.
fn refusal(resp: ureq::Response) -> ClientError {
    let status = resp.status();
    let header_id = resp.header("x-request-id").map(str::to_owned);
    let body: Value = resp
        .into_string()
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    let error = &body["error"];
    ClientError::Api {
        status,
        code: error["code"].as_str().unwrap_or("unknown").to_owned(),
        message: error["message"]
            .as_str()
            .map_or_else(|| format!("the API answered {status}"), str::to_owned),
        request_id: error["request_id"]
            .as_str()
            .map(str::to_owned)
            .or(header_id),
    }
}

/// One Server-Sent Events frame.
#[derive(Debug, Default)]
pub struct Frame {
    pub id: Option<u64>,
    pub event: String,
    pub data: String,
}

/// Reads frames off a stream; `None` at its end (or a broken connection).
pub fn next_frame(lines: &mut impl std::io::BufRead) -> Option<Frame> {
    let mut frame = Frame::default();
    let mut any = false;
    loop {
        let mut line = String::new();
        match lines.read_line(&mut line) {
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
        if let Some(v) = line.strip_prefix("id:") {
            frame.id = v.trim().parse().ok();
            any = true;
        } else if let Some(v) = line.strip_prefix("event:") {
            frame.event = v.trim().to_owned();
            any = true;
        } else if let Some(v) = line.strip_prefix("data:") {
            frame.data.push_str(v.strip_prefix(' ').unwrap_or(v));
            any = true;
        }
    }
}
