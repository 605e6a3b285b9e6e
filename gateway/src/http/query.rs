//! `POST /sql`: one query, or a batch in one transaction, on a backend of the database's pool.
//!
//! The request: `Neon-Connection-String: postgres://user:password@host[:port]/db` (the user,
//! password and database are read from it; its host must be one this Gateway answers for),
//! and a JSON body `{"query", "params"?, "arrayMode"?}` or `{"queries": [...]}`. The answer:
//! `{fields, rows, command, rowCount, rowAsArray}`, or for a batch `{results: [...]}`.
//! Headers: `Neon-Raw-Text-Output: true` (values as PostgreSQL's text), `Neon-Array-Mode: true`
//! (rows as arrays), and for a batch `Neon-Batch-Isolation-Level` (`Serializable`,
//! `RepeatableRead`, `ReadCommitted`, `ReadUncommitted`), `-Read-Only` and `-Deferrable`
//! (echoed in the answer); a flag is on only when it is exactly `true`.
//!
//! A query runs in the extended protocol (its parameters as text, of types the server infers),
//! the whole request in one round trip: a batch is `BEGIN ...`, its queries, `COMMIT`, then one
//! Sync, so that an error skips the rest and the transaction is rolled back. A request that
//! leaves state in the session (a `SET`, a temporary table, ...) closes its backend after
//! it, so that no other request sees it. Past the statement timeout the query is cancelled
//! (`57014`), past the response limit too (`54000`).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue, CONTENT_LENGTH, HOST};
use hyper::{Request, Response, StatusCode};
use serde_json::Value;
use spg99_scram::Keys;

use super::{answer, json, Body, Client, Failure};
use crate::pgwire::{Message, Out};
use crate::pool::{Conn, Pool, Settings};
use crate::session::{Gateway, Login};

/// How long a request's body may take to arrive.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a cancelled query has to end before its backend is closed instead.
const GRACE: Duration = Duration::from_secs(5);
/// The longest message read from a backend.
const MAX_BACKEND_MESSAGE: usize = 1 << 30;
/// Parameters one query may have (the protocol's count is 16 bits).
const MAX_PARAMS: usize = 65_535;

/// The request's options, from its headers.
struct Options {
    raw: bool,
    array_mode: bool,
    isolation: Option<&'static str>,
    read_only: bool,
    deferrable: bool,
}

/// One query of a request.
struct Step {
    text: String,
    params: Vec<Option<String>>,
    array_mode: bool,
}

pub(super) async fn handle(
    gw: &Arc<Gateway>,
    addr: IpAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, Failure> {
    let (parts, body) = req.into_parts();
    let h = &parts.headers;
    let target = h
        .get("neon-connection-string")
        .ok_or_else(|| {
            Failure::bad(
                "08P01",
                "the Neon-Connection-String header is missing: postgres://user:password@host/db",
            )
        })?
        .to_str()
        .map_err(|_| Failure::bad("08P01", "Neon-Connection-String is not text"))?;
    let target = Dsn::parse(target)?;
    target.check_host(gw, h)?;
    let options = Options::parse(h)?;

    let limit = gw.http.max_request;
    let too_large = || {
        Failure::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "54000",
            format!("the request body is over this Gateway's limit of {limit} bytes"),
        )
    };
    let declared = h
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        drain(body).await;
        return Err(too_large());
    }
    let mut incoming = body;
    let read = tokio::time::timeout(BODY_TIMEOUT, async {
        let mut body = Vec::new();
        while let Some(frame) = incoming.frame().await {
            let frame =
                frame.map_err(|_| Failure::bad("08P01", "the request body could not be read"))?;
            if let Some(data) = frame.data_ref() {
                if body.len() + data.len() > limit {
                    return Ok(None);
                }
                body.extend_from_slice(data);
            }
        }
        Ok(Some(body))
    })
    .await;
    let body = match read {
        Ok(Ok(Some(body))) => body,
        Ok(Ok(None)) => {
            drain(incoming).await;
            return Err(too_large());
        }
        Ok(Err(f)) => return Err(f),
        Err(_) => {
            return Err(Failure::new(
                StatusCode::REQUEST_TIMEOUT,
                "08P01",
                format!(
                    "the request body did not arrive within {} s",
                    BODY_TIMEOUT.as_secs()
                ),
            ))
        }
    };
    let steps = steps(&body, options.array_mode)?;
    let batch = steps.1;

    // The password, checked against the role's verifier (failures count as on the ports).
    let (verifier, known) = crate::session::role(gw, &target.user, Some(addr)).await?;
    let key = gw
        .passwords
        .check(&target.user, &verifier, target.password.as_bytes())
        .await
        .filter(|_| known)
        .ok_or_else(|| crate::session::bad_password(gw, &target.user, Some(addr)))?;
    gw.failures.succeeded(&target.user, Some(addr));
    let who = Login {
        user: target.user,
        database: target.database,
        keys: Keys {
            client_key: key,
            server_key: verifier.server_key,
        },
        forwarded: Vec::new(),
        addr: Some(addr),
    };

    // In a task of its own: a client that goes away leaves the backend to be given back whole.
    let task_gw = gw.clone();
    let echo = batch.then(|| options.echo());
    let json = tokio::spawn(async move { execute(&task_gw, who, steps, options).await })
        .await
        .map_err(|_| {
            Failure::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "XX000",
                "the request failed",
            )
        })??;
    crate::metrics::get()
        .http_bytes_out
        .inc_by(json.len() as u64);
    let mut r = answer(StatusCode::OK, json);
    for (name, value) in echo.into_iter().flatten() {
        r.headers_mut()
            .insert(name, HeaderValue::from_static(value));
    }
    Ok(r)
}

/// Reads what is left of a body refused for its size, and drops it (up to [`DRAINED`] bytes
/// and [`GRACE`]), so that a client that sends all of its body before it reads the answer
/// hears the refusal rather than a broken connection.
async fn drain<B: hyper::body::Body + Unpin>(mut body: B) {
    let mut left = DRAINED;
    let _ = tokio::time::timeout(GRACE, async {
        while let Some(Ok(frame)) = body.frame().await {
            let n = frame.data_ref().map_or(0, bytes::Buf::remaining);
            left = left.saturating_sub(n);
            if left == 0 {
                return;
            }
        }
    })
    .await;
}

/// The most of a refused body read and dropped.
const DRAINED: usize = 100 << 20;

/// Where a connection string points.
struct Dsn {
    user: String,
    password: String,
    host: String,
    database: String,
}

impl Dsn {
    fn parse(s: &str) -> Result<Dsn, Failure> {
        let bad = |why: &str| {
            Failure::bad(
                "08P01",
                format!("Neon-Connection-String: {why} (postgres://user:password@host/db)"),
            )
        };
        let url = url::Url::parse(s).map_err(|e| bad(&e.to_string()))?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(bad("not a postgres:// URL"));
        }
        let decode = |part: &str| {
            percent_encoding::percent_decode_str(part)
                .decode_utf8()
                .map(|s| s.into_owned())
                .map_err(|_| bad("not UTF-8 once decoded"))
        };
        let user = decode(url.username())?;
        if user.is_empty() {
            return Err(bad("no user"));
        }
        let password = decode(url.password().ok_or_else(|| bad("no password"))?)?;
        let host = url
            .host_str()
            .ok_or_else(|| bad("no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        let database = decode(url.path().trim_start_matches('/'))?;
        let database = if database.is_empty() {
            user.clone()
        } else {
            database
        };
        Ok(Dsn {
            user,
            password,
            host,
            database,
        })
    }

    /// The connection string must name this Gateway: one of its names, or the host the
    /// request was sent to.
    fn check_host(&self, gw: &Gateway, h: &HeaderMap) -> Result<(), Failure> {
        let asked = h
            .get(HOST)
            .and_then(|v| v.to_str().ok())
            .map(super::host_name);
        let ours = gw
            .http
            .hosts
            .iter()
            .any(|n| n.eq_ignore_ascii_case(&self.host))
            || asked.as_deref() == Some(self.host.as_str());
        if ours {
            return Ok(());
        }
        Err(Failure::bad(
            "08001",
            format!(
                "the connection string is for host \"{}\", which this Gateway does not serve (it answers for {}): use the connection string of a database here",
                self.host,
                gw.http.hosts.join(", ")
            ),
        ))
    }
}

impl Options {
    fn parse(h: &HeaderMap) -> Result<Options, Failure> {
        let on = |name: &str| h.get(name).is_some_and(|v| v == "true");
        let isolation = match h.get("neon-batch-isolation-level") {
            None => None,
            Some(v) => Some(match v.as_bytes() {
                b"Serializable" => "Serializable",
                b"RepeatableRead" => "RepeatableRead",
                b"ReadCommitted" => "ReadCommitted",
                b"ReadUncommitted" => "ReadUncommitted",
                _ => {
                    return Err(Failure::bad(
                        "22023",
                        "Neon-Batch-Isolation-Level must be Serializable, RepeatableRead, ReadCommitted or ReadUncommitted",
                    ))
                }
            }),
        };
        Ok(Options {
            raw: on("neon-raw-text-output"),
            array_mode: on("neon-array-mode"),
            isolation,
            read_only: on("neon-batch-read-only"),
            deferrable: on("neon-batch-deferrable"),
        })
    }

    /// `BEGIN` with the batch's options.
    fn begin(&self) -> String {
        let mut sql = "BEGIN".to_owned();
        if let Some(level) = self.isolation {
            sql += match level {
                "Serializable" => " ISOLATION LEVEL SERIALIZABLE",
                "RepeatableRead" => " ISOLATION LEVEL REPEATABLE READ",
                "ReadCommitted" => " ISOLATION LEVEL READ COMMITTED",
                _ => " ISOLATION LEVEL READ UNCOMMITTED",
            };
        }
        if self.read_only {
            sql += " READ ONLY";
        }
        if self.deferrable {
            sql += " DEFERRABLE";
        }
        sql
    }

    /// The batch options a batch's answer repeats.
    fn echo(&self) -> Vec<(&'static str, &'static str)> {
        let mut out = Vec::new();
        if let Some(level) = self.isolation {
            out.push(("neon-batch-isolation-level", level));
        }
        if self.read_only {
            out.push(("neon-batch-read-only", "true"));
        }
        if self.deferrable {
            out.push(("neon-batch-deferrable", "true"));
        }
        out
    }
}

/// The request's queries, and whether it is a batch.
fn steps(body: &[u8], array_mode: bool) -> Result<(Vec<Step>, bool), Failure> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| Failure::bad("08P01", format!("the request body is not JSON: {e}")))?;
    let step = |v: &Value| -> Result<Step, Failure> {
        let shape = || {
            Failure::bad(
                "08P01",
                r#"a query is {"query": "SELECT $1", "params": [...], "arrayMode": false}"#,
            )
        };
        let text = v.get("query").and_then(Value::as_str).ok_or_else(shape)?;
        let params = match v.get("params") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(p)) => p.iter().map(json::param).collect(),
            Some(_) => return Err(shape()),
        };
        if params.len() > MAX_PARAMS {
            return Err(Failure::bad(
                "54000",
                format!("a query takes {MAX_PARAMS} parameters at most"),
            ));
        }
        let array_mode = match v.get("arrayMode") {
            None | Some(Value::Null) => array_mode,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(shape()),
        };
        Ok(Step {
            text: text.to_owned(),
            params,
            array_mode,
        })
    };
    match v.get("queries") {
        Some(Value::Array(queries)) => {
            Ok((queries.iter().map(step).collect::<Result<_, _>>()?, true))
        }
        Some(_) => Err(Failure::bad("08P01", r#""queries" is a list of queries"#)),
        None => Ok((vec![step(&v)?], false)),
    }
}

/// A backend lent by the pool: back to it when the request left it clean, else closed (also
/// if the task ends some other way).
struct Lent<'a> {
    pool: &'a Pool,
    conn: Option<Conn>,
}

impl Lent<'_> {
    fn conn(&mut self) -> &mut Conn {
        self.conn.as_mut().expect("lent")
    }

    fn give_back(mut self) {
        if let Some(c) = self.conn.take() {
            self.pool.give_back(c);
        }
    }
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        if self.conn.take().is_some() {
            self.pool.lost();
        }
    }
}

/// A request under way counts its database's client busy.
struct Using(Arc<Client>);

impl Drop for Using {
    fn drop(&mut self) {
        self.0.done();
    }
}

/// The startup parameters of HTTP requests' backends: none.
fn settings() -> Settings {
    static NONE: std::sync::OnceLock<Settings> = std::sync::OnceLock::new();
    NONE.get_or_init(|| Arc::new(Vec::new())).clone()
}

async fn execute(
    gw: &Gateway,
    who: Login,
    (steps, batch): (Vec<Step>, bool),
    options: Options,
) -> Result<Vec<u8>, Failure> {
    let client = Using(gw.http.client(gw, &who));
    let held = client.0.held(gw, &who).await?;
    let settings = settings();
    let mut ticket = None;
    let conn = match crate::pool::checkout(gw, &who, &client.0.pool, &settings, &held, &mut ticket)
        .await?
    {
        Ok(c) => c,
        Err(busy) => {
            let mut f = Failure::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "53300",
                format!(
                    "every one of the {} pooled connections to database \"{}\" stayed busy for {} s (the pool timeout); retry",
                    busy.size,
                    who.database,
                    gw.pools.timeout.as_secs()
                ),
            );
            f.retry_after = Some(1);
            return Err(f);
        }
    };
    drop(ticket);
    let mut lent = Lent {
        pool: &client.0.pool,
        conn: Some(conn),
    };
    let mut run = Run::new(gw, &steps, &options);
    let mut out = Out::default();
    let mut slots = Vec::new();
    if batch {
        statement(&mut out, &options.begin(), &[], false);
        slots.push(None);
    }
    for (i, s) in steps.iter().enumerate() {
        statement(&mut out, &s.text, &s.params, true);
        slots.push(Some(i));
        if run.dirty.is_none() {
            run.dirty = crate::sql::session_state(&crate::sql::read(&s.text));
        }
    }
    if batch {
        statement(&mut out, "COMMIT", &[], false);
        slots.push(None);
    }
    out.put(b'S', b"");
    run.slots = slots.into();
    let ended = run.exchange(lent.conn(), out).await;
    let clean = match ended {
        Ok(b'I') => true,
        // A batch that failed: rolled back here, the backend kept.
        Ok(_) => {
            let mut rollback = Out::default();
            rollback.put(b'Q', b"ROLLBACK\0");
            run.slots.clear();
            run.deadline = Instant::now() + GRACE;
            let failure = run.failure.take();
            let ended = run.exchange(lent.conn(), rollback).await;
            run.failure = failure;
            matches!(ended, Ok(b'I'))
        }
        Err(()) => false,
    };
    if clean && run.dirty.is_none() {
        lent.give_back();
    }
    let m = crate::metrics::get();
    m.http_rows.inc_by(run.rows);
    if let Some(f) = run.failure {
        return Err(f);
    }
    Ok(run.answer(batch))
}

/// Parse, Bind, (Describe,) Execute of `text` with `params`, unnamed.
fn statement(out: &mut Out, text: &str, params: &[Option<String>], describe: bool) {
    let mut parse = Vec::with_capacity(text.len() + 4);
    parse.push(0);
    parse.extend_from_slice(text.as_bytes());
    parse.extend_from_slice(&[0, 0, 0]);
    out.put(b'P', &parse);
    let mut bind = vec![0, 0, 0, 0];
    bind.extend_from_slice(&(params.len() as u16).to_be_bytes());
    for p in params {
        match p {
            None => bind.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(v) => {
                bind.extend_from_slice(&(v.len() as i32).to_be_bytes());
                bind.extend_from_slice(v.as_bytes());
            }
        }
    }
    bind.extend_from_slice(&[0, 0]);
    out.put(b'B', &bind);
    if describe {
        out.put(b'D', b"P\0");
    }
    out.put(b'E', &[0, 0, 0, 0, 0]);
}

/// One query's answer, as it is read.
#[derive(Default)]
struct Answer {
    /// `fields` as JSON.
    fields: Vec<u8>,
    names: Vec<String>,
    types: Vec<u32>,
    /// The rows as JSON, comma-separated.
    rows: Vec<u8>,
    nrows: u64,
    command: String,
    array_mode: bool,
}

/// A request's exchange with its backend.
struct Run<'a> {
    gw: &'a Gateway,
    raw: bool,
    steps: &'a [Step],
    /// Whose answer comes next: a query of the request's, or one of the Gateway's (`None`).
    slots: std::collections::VecDeque<Option<usize>>,
    answers: Vec<Answer>,
    current: Answer,
    failure: Option<Failure>,
    deadline: Instant,
    /// Why the backend must not serve another request.
    dirty: Option<&'static str>,
    cancelled: Option<Failure>,
    size: usize,
    rows: u64,
}

impl<'a> Run<'a> {
    fn new(gw: &'a Gateway, steps: &'a [Step], options: &Options) -> Run<'a> {
        Run {
            gw,
            raw: options.raw,
            steps,
            slots: Default::default(),
            answers: Vec::with_capacity(steps.len()),
            current: Answer::default(),
            failure: None,
            deadline: Instant::now() + gw.http.statement_timeout,
            dirty: None,
            cancelled: None,
            size: 0,
            rows: 0,
        }
    }

    /// Sends `out` and reads up to its ReadyForQuery: the transaction status, or `Err` when
    /// the backend is lost or did not end a cancelled query in time.
    async fn exchange(&mut self, conn: &mut Conn, out: Out) -> Result<u8, ()> {
        use tokio::io::AsyncWriteExt;
        if conn.stream.write_all(&out.0).await.is_err() {
            return self.lost();
        }
        loop {
            loop {
                let m = match conn.frames.next(MAX_BACKEND_MESSAGE) {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    Err(_) => return self.lost(),
                };
                if let Some(status) = self.said(conn, m).await {
                    conn.frames.consume();
                    return Ok(status);
                }
            }
            conn.frames.consume();
            match tokio::time::timeout_at(self.deadline.into(), conn.frames.fill(&mut conn.stream))
                .await
            {
                Ok(Ok(n)) if n > 0 => {}
                Ok(_) => return self.lost(),
                Err(_) if self.cancelled.is_none() => {
                    let secs = self.gw.http.statement_timeout.as_secs();
                    let f = Failure::bad(
                        "57014",
                        format!("canceling statement due to statement timeout: a request over HTTP runs {secs} s at most"),
                    );
                    self.cancel(conn, f).await;
                }
                Err(_) => {
                    // Cancelled and still not done: the backend is closed instead.
                    self.failure = self.cancelled.take();
                    return Err(());
                }
            }
        }
    }

    fn lost(&mut self) -> Result<u8, ()> {
        if self.failure.is_none() {
            self.failure = Some(Failure::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "08006",
                "the connection to the database's server was lost (the database moved or restarted); retry",
            ));
        }
        Err(())
    }

    /// Cancels the query under way, for `why`.
    async fn cancel(&mut self, conn: &Conn, why: Failure) {
        self.cancelled = Some(why);
        self.deadline = Instant::now() + GRACE;
        crate::cancel::send(&crate::cancel::Target {
            backend_addr: conn.backend_addr.clone(),
            pid: conn.pid,
            secret: conn.secret,
        })
        .await;
    }

    /// One message of the backend's; `Some(status)` at the ReadyForQuery.
    async fn said(&mut self, conn: &Conn, m: Message) -> Option<u8> {
        match m.tag {
            b'T' => self.describe(&m.body),
            b'n' => self.current.fields = b"[]".to_vec(),
            b'D' if self.cancelled.is_none() => {
                self.row(&m.body);
                let max = self.gw.http.max_response;
                if self.size > max {
                    let f = Failure::bad(
                        "54000",
                        format!("the response is over this Gateway's limit of {max} bytes"),
                    );
                    self.cancel(conn, f).await;
                }
            }
            b'C' | b'I' => {
                let tag = m.body.strip_suffix(b"\0").unwrap_or(&m.body);
                if let Some(Some(i)) = self.slots.pop_front() {
                    let mut a = std::mem::take(&mut self.current);
                    a.command = String::from_utf8_lossy(tag).into_owned();
                    a.array_mode = self.steps[i].array_mode;
                    if a.fields.is_empty() {
                        a.fields = b"[]".to_vec();
                    }
                    self.answers.push(a);
                }
            }
            b'E' if Failure::from_backend(&m.body).field("severity") == Some("FATAL") => {
                // The backend ends (its server shutting down, the writer retired): the
                // request's transaction did not commit, as when the connection is lost.
                self.failure = None;
                let _ = self.lost();
            }
            b'E' => {
                let f = Failure::from_backend(&m.body);
                let f = match self.cancelled.take() {
                    // The cancel's own error says why the Gateway cancelled.
                    Some(why) if f.code() == "57014" => why,
                    Some(why) => {
                        self.cancelled = Some(why);
                        f
                    }
                    None => f,
                };
                self.failure.get_or_insert(f);
            }
            b'S' => self.dirty = Some("a setting reported changed"),
            b'Z' => {
                if let Some(why) = self.cancelled.take() {
                    // Cancelled too late to stop it: the answer is incomplete all the same.
                    self.failure.get_or_insert(why);
                }
                return Some(m.body.first().copied().unwrap_or(b'I'));
            }
            // ParseComplete, BindComplete, notices, notifications: nothing to say.
            _ => {}
        }
        None
    }

    /// A RowDescription: the fields, as JSON.
    fn describe(&mut self, body: &[u8]) {
        let a = &mut self.current;
        let mut out = vec![b'['];
        let n = body
            .get(..2)
            .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
        let mut at = 2;
        for i in 0..n {
            let Some(len) = body.get(at..).and_then(|b| b.iter().position(|c| *c == 0)) else {
                break;
            };
            let name = String::from_utf8_lossy(&body[at..at + len]).into_owned();
            at += len + 1;
            let Some(f) = body.get(at..at + 18) else {
                break;
            };
            at += 18;
            let u32_at = |i: usize| u32::from_be_bytes(f[i..i + 4].try_into().unwrap());
            let i16_at = |i: usize| i16::from_be_bytes(f[i..i + 2].try_into().unwrap());
            let (table, column, oid, size, modifier) = (
                u32_at(0),
                i16_at(4),
                u32_at(6),
                i16_at(10),
                u32_at(12) as i32,
            );
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"name\":");
            json::string(&mut out, &name);
            out.extend_from_slice(
                format!(
                    ",\"dataTypeID\":{oid},\"tableID\":{table},\"columnID\":{column},\"dataTypeSize\":{size},\"dataTypeModifier\":{modifier},\"format\":\"text\"}}"
                )
                .as_bytes(),
            );
            a.names.push(name);
            a.types.push(oid);
        }
        out.push(b']');
        a.fields = out;
    }

    /// A DataRow, as JSON.
    fn row(&mut self, body: &[u8]) {
        let Some(i) = self.slots.front().copied().flatten() else {
            return;
        };
        let array_mode = self.steps[i].array_mode;
        let a = &mut self.current;
        let before = a.rows.len();
        if a.nrows > 0 {
            a.rows.push(b',');
        }
        a.rows.push(if array_mode { b'[' } else { b'{' });
        let n = body
            .get(..2)
            .map_or(0, |b| u16::from_be_bytes([b[0], b[1]])) as usize;
        let mut at = 2;
        for c in 0..n {
            if c > 0 {
                a.rows.push(b',');
            }
            if !array_mode {
                json::string(
                    &mut a.rows,
                    a.names.get(c).map_or("?column?", |s| s.as_str()),
                );
                a.rows.push(b':');
            }
            let len = body
                .get(at..at + 4)
                .map_or(-1, |b| i32::from_be_bytes(b.try_into().unwrap()));
            at += 4;
            if len < 0 {
                a.rows.extend_from_slice(b"null");
                continue;
            }
            let end = (at + len as usize).min(body.len());
            let text = String::from_utf8_lossy(&body[at..end]);
            at = end;
            match self.raw {
                true => json::string(&mut a.rows, &text),
                false => json::value(&mut a.rows, &text, a.types.get(c).copied().unwrap_or(0)),
            }
        }
        a.rows.push(if array_mode { b']' } else { b'}' });
        a.nrows += 1;
        self.rows += 1;
        self.size += a.rows.len() - before;
    }

    /// The answer's JSON.
    fn answer(&self, batch: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.size + 256);
        if batch {
            out.extend_from_slice(b"{\"results\":[");
        }
        for (i, a) in self.answers.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"fields\":");
            out.extend_from_slice(&a.fields);
            out.extend_from_slice(b",\"rows\":[");
            out.extend_from_slice(&a.rows);
            out.extend_from_slice(b"],\"command\":");
            let (command, count) = command_tag(&a.command);
            json::string(&mut out, command);
            out.extend_from_slice(b",\"rowCount\":");
            match count {
                Some(n) => out.extend_from_slice(n.to_string().as_bytes()),
                None => out.extend_from_slice(b"null"),
            }
            out.extend_from_slice(b",\"rowAsArray\":");
            out.extend_from_slice(if a.array_mode { b"true" } else { b"false" });
            out.push(b'}');
        }
        if batch {
            out.extend_from_slice(b"]}");
        }
        out
    }
}

/// A command tag's command and row count (`INSERT 0 5`: `INSERT`, 5).
fn command_tag(tag: &str) -> (&str, Option<u64>) {
    match tag.split_once(' ') {
        None => (tag, None),
        Some(("INSERT", rest)) => (
            "INSERT",
            rest.rsplit(' ').next().and_then(|n| n.parse().ok()),
        ),
        Some((command, count)) => (command, count.parse().ok()),
    }
}
