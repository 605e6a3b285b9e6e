//! Tooling over the log: `spg99 log dump|tail`, `rebuild`, `state --at`, `verify`.
//!
//! Each works offline on `--data-dir` (the server stopped: sled allows one process per data
//! directory) or online with `--url` and `SPG99_TOKEN` (a global key) through the admin API,
//! which runs the same code on the server. Output is JSON, one object per line unless
//! `--format pretty`. Exit status: 0 when all is well, 1 when a check fails, 2 when the tool
//! cannot run.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{json, Value};
use spg99_events::{Envelope, Event};
use spg99_projections::{Map, State};

use crate::log::{Location, Log};
use crate::recovery::replay;
use crate::routes::{accounts::AccountView, dbs::DbView, keys::KeyView, tenants::TenantView};
use crate::stream::{envelope_json, Filter};

/// The events from `from` to `to` (inclusive) that `filter` lets through, in order; the first
/// error ends them.
pub fn select<'a>(
    log: &'a Log,
    from: u64,
    to: u64,
    filter: &'a Filter,
) -> impl Iterator<Item = crate::log::Result<Envelope>> + 'a {
    log.read_from(from)
        .take_while(move |e| e.as_ref().map_or(true, |e| e.seq <= to))
        .filter(move |e| e.as_ref().map_or(true, |e| filter.matches(e)))
}

/// A point in the log: a seq, or a time (the last event at or before it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum At {
    Seq(u64),
    Time(i64),
}

impl At {
    pub fn parse(raw: &str) -> Result<At, String> {
        if let Ok(seq) = raw.parse::<u64>() {
            return Ok(At::Seq(seq));
        }
        chrono::DateTime::parse_from_rfc3339(raw)
            .map(|t| At::Time(t.timestamp_micros()))
            .map_err(|_| format!("{raw:?} is neither a seq nor an RFC 3339 time"))
    }
}

/// `a.b,c.d` → known event types (exactly: no spaces, no empty names).
pub fn parse_types(raw: Option<&str>) -> Result<Option<Vec<&'static str>>, String> {
    raw.map(|list| {
        list.split(',')
            .map(|t| {
                Event::TYPE_NAMES
                    .iter()
                    .find(|k| **k == t)
                    .copied()
                    .ok_or_else(|| format!("unknown event type {t:?}"))
            })
            .collect()
    })
    .transpose()
}

/// The seq that `at` names, no later than `head`.
fn resolve(log: &Log, at: At, head: u64) -> Result<u64, String> {
    match at {
        At::Seq(seq) => Ok(seq.min(head)),
        At::Time(micros) => {
            let mut found = 0;
            for env in log.read_from(1) {
                let env = env.map_err(|e| e.to_string())?;
                if env.seq > head || env.at.as_micros() > micros {
                    break;
                }
                found = env.seq;
            }
            Ok(found)
        }
    }
}

/// The state as it was at `at`, as JSON (secrets left out), from the newest snapshot at or
/// before it and the log.
pub fn state_at(
    log: &Log,
    data_dir: &Path,
    at: At,
    head: u64,
    tenant: Option<&str>,
) -> Result<Value, String> {
    let seq = resolve(log, at, head)?;
    let base = crate::snapshot::load(data_dir, seq).unwrap_or_default();
    let (state, _) = replay(log, base, seq).map_err(|e| e.to_string())?;
    Ok(state_json(&state, tenant))
}

/// The materialized state as JSON: the same views the API shows, no secrets.
pub fn state_json(state: &State, tenant: Option<&str>) -> Value {
    let tenants: Vec<_> = state
        .tenants_by_name
        .values()
        .filter_map(|id| state.tenants.get(id))
        .filter(|t| tenant.is_none_or(|n| n == t.name))
        .collect();
    let dbs: Vec<Value> = tenants
        .iter()
        .flat_map(|t| state.dbs_of(t.id).map(|d| json!(DbView::of(state, t, d))))
        .collect();
    let mut out = json!({
        "seq": state.last_seq,
        "at": state.last_at.map(crate::http::rfc3339),
        "fingerprint": state.fingerprint(),
        "counts": state.counts(),
        "tenants": tenants.iter().map(|t| json!(TenantView::new(state, t))).collect::<Vec<_>>(),
        "dbs": dbs,
    });
    if tenant.is_none() {
        out["accounts"] = json!(state
            .accounts
            .values()
            .map(|a| AccountView::from(&**a))
            .collect::<Vec<_>>());
        out["api_keys"] = json!(state
            .api_keys
            .values()
            .map(|k| KeyView::new(state, k))
            .collect::<Vec<_>>());
    }
    out
}

/// Where a tool reads from.
pub enum Source {
    Dir(Local),
    Url { base: String, token: String },
}

/// A log read directly: sled in `data_dir`, or a PostgreSQL log (`log`), with its snapshots
/// in `data_dir`.
pub struct Local {
    pub data_dir: PathBuf,
    pub log: Option<String>,
}

impl Local {
    /// Whether there is a log to read here.
    pub fn has_log(&self) -> bool {
        self.log.is_some() || self.data_dir.join("db").exists()
    }

    /// The log, read only where that is possible, and where its snapshots are.
    fn open(&self) -> Result<(Log, PathBuf), ToolError> {
        let Some(url) = &self.log else {
            return Ok((open_log(&self.data_dir)?, self.data_dir.clone()));
        };
        let at = Location::postgres(url).map_err(|e| cannot(format!("--log {e}")))?;
        let log = Log::at(&at, false).map_err(cannot)?;
        let snapshots = log.local_dir(&self.data_dir);
        Ok((log, snapshots))
    }
}

/// A tool's failure: exit 1 (a check failed) or 2 (could not run).
#[derive(Debug)]
pub enum ToolError {
    Failed(String),
    Cannot(String),
}

impl ToolError {
    pub fn exit_code(&self) -> i32 {
        match self {
            ToolError::Failed(_) => 1,
            ToolError::Cannot(_) => 2,
        }
    }
}

impl std::fmt::Display for ToolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ToolError::Failed(m) | ToolError::Cannot(m) => f.write_str(m),
        }
    }
}

type ToolResult = Result<(), ToolError>;

fn cannot(e: impl std::fmt::Display) -> ToolError {
    ToolError::Cannot(e.to_string())
}

fn open_log(dir: &Path) -> Result<Log, ToolError> {
    if !dir.join("db").exists() {
        return Err(ToolError::Cannot(format!("{} holds no log", dir.display())));
    }
    Log::open(dir).map_err(|e| {
        ToolError::Cannot(format!(
            "{e} (if a server is running on this directory, use --url instead)"
        ))
    })
}

fn get(base: &str, token: &str, path: &str) -> Result<Value, ToolError> {
    match ureq::get(&format!("{base}{path}"))
        .set("Authorization", &format!("Bearer {token}"))
        .call()
    {
        Ok(r) => r.into_json().map_err(cannot),
        Err(ureq::Error::Status(code, r)) => Err(ToolError::Cannot(format!(
            "{path}: {code} {}",
            r.into_string().unwrap_or_default()
        ))),
        Err(e) => Err(cannot(e)),
    }
}

fn print(out: &mut impl Write, v: &Value, pretty: bool) -> ToolResult {
    let text = if pretty {
        serde_json::to_string_pretty(v)
    } else {
        serde_json::to_string(v)
    }
    .map_err(cannot)?;
    writeln!(out, "{text}").map_err(cannot)
}

/// What `log dump` selects.
pub struct DumpArgs {
    pub from: u64,
    pub to: Option<u64>,
    pub tenant: Option<String>,
    pub db: Option<uuid::Uuid>,
    pub types: Option<String>,
    pub pretty: bool,
}

pub fn dump(source: &Source, args: &DumpArgs, out: &mut impl Write) -> ToolResult {
    let types = parse_types(args.types.as_deref()).map_err(ToolError::Cannot)?;
    match source {
        Source::Dir(local) => {
            let (log, _) = local.open()?;
            let filter = Filter::operator(args.tenant.clone(), args.db, types);
            for env in select(&log, args.from, args.to.unwrap_or(u64::MAX), &filter) {
                let env = env.map_err(|e| ToolError::Failed(e.to_string()))?;
                print(out, &envelope_json(&env), args.pretty)?;
            }
            Ok(())
        }
        Source::Url { base, token } => {
            let mut from = Some(args.from.max(1));
            while let Some(f) = from {
                let mut q = format!("/v2/admin/log?from={f}&limit=1000");
                if let Some(to) = args.to {
                    q.push_str(&format!("&to={to}"));
                }
                if let Some(t) = &args.tenant {
                    q.push_str(&format!("&tenant={t}"));
                }
                if let Some(d) = args.db {
                    q.push_str(&format!("&db={d}"));
                }
                if let Some(t) = &args.types {
                    q.push_str(&format!("&types={t}"));
                }
                let page = get(base, token, &q)?;
                for item in page["items"].as_array().into_iter().flatten() {
                    print(out, item, args.pretty)?;
                }
                from = page["next_from"].as_u64();
            }
            Ok(())
        }
    }
}

/// Checks every record: gapless seq from 1, every record decodes, every checksum holds.
pub fn verify(source: &Source, out: &mut impl Write) -> ToolResult {
    match source {
        Source::Dir(local) => {
            let (log, _) = local.open()?;
            let mut count = 0u64;
            for env in log.read_from(1) {
                match env {
                    Ok(_) => count += 1,
                    Err(e) => {
                        return Err(ToolError::Failed(format!(
                            "the log is damaged after {count} good records: {e}"
                        )))
                    }
                }
            }
            print(
                out,
                &json!({"ok": true, "records": count, "first_seq": (count > 0).then_some(1), "last_seq": count}),
                false,
            )
        }
        Source::Url { base, token } => {
            let v = get(base, token, "/v2/admin/verify")?;
            print(out, &v, false)?;
            if v["equal"] == true {
                Ok(())
            } else {
                Err(ToolError::Failed(
                    "the replayed state differs from the live state".into(),
                ))
            }
        }
    }
}

/// Lists what differs between two states, object by object (at most a few per kind).
pub fn diff(a: &State, b: &State) -> Vec<String> {
    fn maps<K: Ord + Clone + std::fmt::Debug, V: Clone + serde::Serialize + PartialEq>(
        kind: &str,
        a: &Map<K, V>,
        b: &Map<K, V>,
        out: &mut Vec<String>,
    ) {
        let mut found = 0;
        for (k, va) in a {
            match b.get(k) {
                Some(vb) if vb == va => {}
                Some(vb) => {
                    out.push(format!(
                        "{kind} {k:?}: {} != {}",
                        serde_json::to_string(va).unwrap_or_default(),
                        serde_json::to_string(vb).unwrap_or_default()
                    ));
                    found += 1;
                }
                None => {
                    out.push(format!("{kind} {k:?}: only in the first"));
                    found += 1;
                }
            }
            if found >= 5 {
                return;
            }
        }
        for k in b.keys().filter(|k| !a.contains_key(*k)).take(5 - found) {
            out.push(format!("{kind} {k:?}: only in the second"));
        }
    }
    let mut out = Vec::new();
    if a.last_seq != b.last_seq {
        out.push(format!("last_seq: {} != {}", a.last_seq, b.last_seq));
    }
    maps("account", &a.accounts, &b.accounts, &mut out);
    maps("api_key", &a.api_keys, &b.api_keys, &mut out);
    maps("tenant", &a.tenants, &b.tenants, &mut out);
    maps("db", &a.dbs, &b.dbs, &mut out);
    maps("idempotency", &a.idempotency, &b.idempotency, &mut out);
    if out.is_empty() && a != b {
        out.push("the states differ in an index or a field not listed here".into());
    }
    out
}

/// Replays the whole log into fresh projections; with `verify`, compares with the newest
/// snapshot and, given `live`, with a running server's state at the same seq.
pub fn rebuild(
    local: &Local,
    verify: bool,
    live: Option<(&str, &str)>,
    out: &mut impl Write,
) -> ToolResult {
    let (log, dir) = local.open()?;
    let started = Instant::now();
    let (state, events) =
        replay(&log, State::default(), u64::MAX).map_err(|e| ToolError::Failed(e.to_string()))?;
    let secs = started.elapsed().as_secs_f64();
    let report = json!({
        "seq": state.last_seq,
        "events": events,
        "seconds": secs,
        "events_per_second": (events as f64 / secs.max(1e-9)).round(),
        "counts": state.counts(),
        "fingerprint": state.fingerprint(),
    });
    print(out, &report, false)?;
    if !verify {
        return Ok(());
    }
    let mut problems = Vec::new();
    match crate::snapshot::load(&dir, state.last_seq) {
        None => print(out, &json!({"snapshot": null}), false)?,
        Some(snap) => {
            let (at_snap, _) = replay(&log, State::default(), snap.last_seq)
                .map_err(|e| ToolError::Failed(e.to_string()))?;
            let equal = at_snap == snap;
            print(
                out,
                &json!({"snapshot": {"seq": snap.last_seq, "equal": equal, "fingerprint": snap.fingerprint()}}),
                false,
            )?;
            if !equal {
                problems.push(format!(
                    "the snapshot at seq {} differs from the replay:",
                    snap.last_seq
                ));
                problems.extend(diff(&snap, &at_snap).into_iter().map(|l| format!("  {l}")));
            }
        }
    }
    if let Some((base, token)) = live {
        let theirs = get(
            base,
            token,
            &format!("/v2/admin/state?at={}", state.last_seq),
        )?;
        let equal = theirs["fingerprint"] == json!(state.fingerprint());
        print(
            out,
            &json!({"live": {"seq": theirs["seq"], "fingerprint": theirs["fingerprint"], "equal": equal}}),
            false,
        )?;
        if !equal {
            problems.push(format!(
                "the live server's state at seq {} differs: fingerprint {} != {}; counts {} != {}",
                state.last_seq,
                theirs["fingerprint"],
                state.fingerprint(),
                theirs["counts"],
                json!(state.counts())
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ToolError::Failed(problems.join("\n")))
    }
}

/// `state --at`.
pub fn state(
    source: &Source,
    at: &str,
    tenant: Option<&str>,
    pretty: bool,
    out: &mut impl Write,
) -> ToolResult {
    let at_parsed = At::parse(at).map_err(ToolError::Cannot)?;
    let v = match source {
        Source::Dir(local) => {
            let (log, dir) = local.open()?;
            let head = log.head().map_err(cannot)?;
            state_at(&log, &dir, at_parsed, head, tenant).map_err(ToolError::Failed)?
        }
        Source::Url { base, token } => {
            let mut q = format!("/v2/admin/state?at={}", at.replace('+', "%2B"));
            if let Some(t) = tenant {
                q.push_str(&format!("&tenant={t}"));
            }
            get(base, token, &q)?
        }
    };
    print(out, &v, pretty)
}

/// `log migrate`: copies the sled log in `dir` into the empty PostgreSQL log at `to`, a batch
/// of records at a time, folding them as they go by, then replays the copy and compares the
/// two states' fingerprints.
pub fn migrate(dir: &Path, to: &str, out: &mut impl Write) -> ToolResult {
    const BATCH: usize = 1_000;
    let from = open_log(dir)?;
    let at = Location::postgres(to).map_err(|e| cannot(format!("--to {e}")))?;
    let target = Log::at(&at, true).map_err(cannot)?;
    let there = target.head().map_err(cannot)?;
    if there > 0 {
        return Err(ToolError::Cannot(format!(
            "the log at --to already holds {there} records: migrate copies into an empty one"
        )));
    }
    let started = Instant::now();
    let mut ours = State::default();
    let mut batch = Vec::with_capacity(BATCH);
    let mut records = from.read_from(1).peekable();
    while let Some(env) = records.next() {
        let env = env.map_err(|e| ToolError::Failed(e.to_string()))?;
        ours.apply(&env);
        batch.push(env);
        if batch.len() == BATCH || records.peek().is_none() {
            target.write(&batch).map_err(cannot)?;
            target.sync().map_err(cannot)?;
            batch.clear();
        }
    }
    let copied = ours.last_seq;
    let copy_secs = started.elapsed().as_secs_f64();
    let (theirs, _) = replay(&target, State::default(), u64::MAX)
        .map_err(|e| ToolError::Failed(e.to_string()))?;
    let equal = ours.fingerprint() == theirs.fingerprint();
    print(
        out,
        &json!({
            "copied": copied,
            "seconds": copy_secs,
            "seq": theirs.last_seq,
            "fingerprint": theirs.fingerprint(),
            "equal": equal,
        }),
        false,
    )?;
    if equal {
        Ok(())
    } else {
        Err(ToolError::Failed(format!(
            "the copy replays to another state: fingerprint {} != {}",
            theirs.fingerprint(),
            ours.fingerprint()
        )))
    }
}
