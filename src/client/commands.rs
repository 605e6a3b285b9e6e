//! The client's commands: what each sends and prints.

use std::io::{BufReader, IsTerminal, Write};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::profile::{Config, Profile};
use super::render::{self, Output};
use super::{next_frame, Answer, Api, ClientError};

/// Where the API is and how to show answers (each also from the environment).
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// The API's base URL (default: the profile's). The token comes from SPG99_TOKEN, else
    /// from the profile saved for that URL.
    #[arg(long, env = "SPG99_URL", global = true)]
    pub url: Option<String>,
    /// The profile to use (default: the one `spg99 login` saved last).
    #[arg(long, env = "SPG99_PROFILE", global = true)]
    pub profile: Option<String>,
    /// `table` for people, `json` for scripts (the API's JSON, one document per line).
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table, global = true)]
    pub output: Output,
}

#[derive(Debug, Subcommand)]
pub enum AccountsCommand {
    /// Every account (global keys).
    List,
    Get {
        account: String,
    },
    /// Creates an account (global keys).
    Create {
        name: String,
        #[arg(long)]
        email: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// An account's keys (default: the calling key's account).
    List {
        #[arg(long)]
        account: Option<String>,
    },
    /// Issues a key; its token is shown once.
    Issue {
        /// The account (default: the calling key's).
        #[arg(long)]
        account: Option<String>,
        /// `account` or `tenant`.
        #[arg(long, default_value = "account")]
        scope: String,
        /// The tenant of a tenant key.
        #[arg(long)]
        tenant: Option<String>,
        /// Comma-separated: can_create_tenant, can_create_db, can_scale, can_delete.
        #[arg(long, value_delimiter = ',')]
        permissions: Vec<String>,
        /// RFC 3339.
        #[arg(long)]
        expires_at: Option<String>,
        #[arg(long)]
        name: Option<String>,
    },
    /// The calling key.
    Me,
    /// A new secret for the calling key (shown once; a saved profile gets it).
    Rotate,
    /// Revokes a key (default: the calling one).
    Revoke { key_id: Option<String> },
}

#[derive(Debug, Subcommand)]
pub enum TenantsCommand {
    /// Creates a tenant; its password is shown (again later with `credentials`).
    Create {
        name: String,
        /// The account (global keys).
        #[arg(long)]
        account: Option<String>,
    },
    /// The tenants the key sees.
    List,
    Get {
        tenant: String,
    },
    /// Deletes a tenant (`deleting`, then gone).
    Delete {
        tenant: String,
        /// Its databases too.
        #[arg(long)]
        cascade: bool,
        #[command(flatten)]
        wait: Wait,
    },
    /// The tenant's PostgreSQL user, password and DSN template.
    Credentials {
        tenant: String,
    },
    /// A new password (the old one stops working within seconds).
    ResetPassword {
        tenant: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum DbsCommand {
    /// Creates a database (`stopped`: it starts on its first connection); with `--parent`,
    /// a branch of another database of the tenant, with its data now or as of `--at`.
    Create {
        tenant: String,
        name: String,
        /// A size of the catalog (`GET /v2/sizes`): L1 (the smallest) unless given.
        #[arg(long, default_value = "L1")]
        size: String,
        /// Make a branch of this database (`--wait`: until the branch serves).
        #[arg(long)]
        parent: Option<String>,
        /// The branch's point of the parent's history: a time, RFC 3339 (from the parent's
        /// `history_start_at` to now); none: now.
        #[arg(long, requires = "parent")]
        at: Option<String>,
        /// High availability: a synchronous standby on another worker while it runs.
        #[arg(long)]
        ha: bool,
        #[command(flatten)]
        wait: Wait,
    },
    /// The tenant's databases.
    List { tenant: String },
    /// The describe: state, scale_state, profile, worker, connections...
    Get { tenant: String, db: String },
    /// Deletes a database (`deleting`, then gone).
    Delete {
        tenant: String,
        db: String,
        #[command(flatten)]
        wait: Wait,
    },
    /// A database's schema against another's (its parent unless `--against`): a unified
    /// diff, `pg_dump --schema-only` normalised.
    Diff {
        tenant: String,
        db: String,
        /// The database to compare against: its parent unless given.
        #[arg(long)]
        against: Option<String>,
    },
    /// High availability on or off: a synchronous standby on another worker while the
    /// database runs (`--wait`: until the standby is synchronous, or gone).
    Ha {
        tenant: String,
        db: String,
        #[arg(value_parser = ["on", "off"])]
        setting: String,
        #[command(flatten)]
        wait: Wait,
    },
    /// Resets a branch to its parent's data as it is now, in place (`restoring`, then
    /// `running`); what it holds now is kept as `<db>_before_reset_<n>`.
    Reset {
        tenant: String,
        db: String,
        #[command(flatten)]
        wait: Wait,
    },
    /// Restores a database in place to a point of its history (`restoring`, then `running`):
    /// the same name, DSN and id; what it holds now is kept as `<db>_before_restore_<n>`.
    Restore {
        tenant: String,
        db: String,
        /// The point: a time, RFC 3339 (from the describe's `history_start_at` to now).
        #[arg(long, required_unless_present = "lsn", conflicts_with = "lsn")]
        at: Option<String>,
        /// Or a WAL position, `X/Y`.
        #[arg(long)]
        lsn: Option<String>,
        #[command(flatten)]
        wait: Wait,
    },
}

/// `--wait`: follow the event stream until what the command began has settled.
#[derive(Debug, Clone, Args)]
pub struct Wait {
    #[arg(long)]
    pub wait: bool,
    /// How long `--wait` waits, in seconds.
    #[arg(long, default_value_t = 300)]
    pub wait_timeout: u64,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Keep following (resuming by itself after a dropped connection).
    #[arg(long, short)]
    pub follow: bool,
    /// After this seq (default: the whole log, or from now on with --follow).
    #[arg(long)]
    pub since: Option<u64>,
    #[arg(long)]
    pub tenant: Option<String>,
    #[arg(long)]
    pub db: Option<String>,
    /// Comma-separated event types (`db.created,db.deleted`).
    #[arg(long)]
    pub types: Option<String>,
}

/// The client's commands, each with its [`ClientArgs`].
#[derive(Debug)]
pub enum Command {
    Login {
        profile: String,
    },
    Accounts(AccountsCommand),
    Keys(KeysCommand),
    Tenants(TenantsCommand),
    Dbs(DbsCommand),
    Events(EventsArgs),
    Billing {
        period: Option<String>,
        account: Option<String>,
    },
    Connect {
        tenant: String,
        db: String,
        pooled: bool,
        psql_args: Vec<String>,
    },
}

/// The API these arguments point at: the URL given or the profile's, the token from
/// SPG99_TOKEN or from the profile — only a profile of that same URL, so that a token is
/// never sent to another server than the one it was saved for.
fn connect(args: &ClientArgs) -> Result<(Api, Option<String>), ClientError> {
    let config = Config::load()?;
    let profile = config.profile(args.profile.as_deref());
    if let (Some(name), None) = (&args.profile, profile) {
        return Err(ClientError::Usage(format!(
            "no profile {name:?} in {}: `spg99 login --profile {name} --url URL` saves one",
            super::profile::path()?.display()
        )));
    }
    let url =
        match (&args.url, profile) {
            (Some(url), _) => url.clone(),
            (None, Some((_, p))) => p.url.clone(),
            (None, None) => return Err(ClientError::Usage(
                "no API to talk to: `spg99 login --url URL` (token in SPG99_TOKEN or on stdin), \
                 or set SPG99_URL and SPG99_TOKEN"
                    .into(),
            )),
        };
    let same = |p: &Profile| p.url.trim_end_matches('/') == url.trim_end_matches('/');
    let saved = profile.filter(|(_, p)| same(p));
    let token = match std::env::var("SPG99_TOKEN").ok().filter(|t| !t.is_empty()) {
        Some(t) => (t, None),
        None => match saved {
            Some((name, p)) => (p.token.clone(), Some(name.to_owned())),
            None => {
                return Err(ClientError::Usage(format!(
                    "no token for {url}: set SPG99_TOKEN, or `spg99 login --url {url}`"
                )))
            }
        },
    };
    Ok((Api::new(&url, &token.0), token.1))
}

fn io(e: std::io::Error) -> ClientError {
    ClientError::Local(format!("cannot write the output: {e}"))
}

/// Percent-encodes a path segment or query value.
fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Every item of a paginated list.
fn all(api: &Api, path: &str) -> Result<Vec<Value>, ClientError> {
    let sep = if path.contains('?') { '&' } else { '?' };
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = match &cursor {
            None => api.get(&format!("{path}{sep}limit=1000"))?,
            Some(c) => api.get(&format!("{path}{sep}limit=1000&cursor={}", enc(c)))?,
        };
        if let Some(list) = page["items"].as_array() {
            items.extend(list.iter().cloned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return Ok(items),
        }
    }
}

/// Shows one object, or a list with `columns`.
fn show(out: &mut impl Write, output: Output, v: &Value) -> Result<(), ClientError> {
    match output {
        Output::Json => render::json(out, v),
        Output::Table => render::object(out, v),
    }
    .map_err(io)
}

fn show_list(
    out: &mut impl Write,
    output: Output,
    items: Vec<Value>,
    columns: &[&str],
) -> Result<(), ClientError> {
    match output {
        Output::Json => render::json(out, &json!({ "items": items })),
        Output::Table => render::list(out, &items, columns),
    }
    .map_err(io)
}

const DB_COLUMNS: &[&str] = &[
    "name",
    "state",
    "size",
    "current_profile",
    "scale_state",
    "worker_id",
    "active_connections",
    "parent",
    "standby_state",
];

pub fn run(command: Command, args: &ClientArgs) -> Result<(), ClientError> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let output = args.output;
    if let Command::Login { profile } = &command {
        return login(args, profile, &mut out);
    }
    let (api, profile) = connect(args)?;
    match command {
        Command::Login { .. } => unreachable!("handled above"),
        Command::Accounts(c) => match c {
            AccountsCommand::List => {
                let items = all(&api, "/v2/accounts")?;
                show_list(
                    &mut out,
                    output,
                    items,
                    &["account_id", "name", "email", "state", "created_at"],
                )
            }
            AccountsCommand::Get { account } => show(
                &mut out,
                output,
                &api.get(&format!("/v2/accounts/{}", enc(&account)))?,
            ),
            AccountsCommand::Create { name, email } => {
                let a = api.call(
                    "POST",
                    "/v2/accounts",
                    Some(&json!({"name": name, "email": email})),
                )?;
                show(&mut out, output, &a.body)
            }
        },
        Command::Keys(c) => keys(&api, profile, c, output, &mut out),
        Command::Tenants(c) => tenants(&api, c, output, &mut out),
        Command::Dbs(c) => dbs(&api, c, output, &mut out),
        Command::Events(e) => events(&api, &e, output, &mut out),
        Command::Billing { period, account } => {
            let mut query = Vec::new();
            if let Some(p) = period {
                query.push(format!("period={}", enc(&p)));
            }
            if let Some(a) = account {
                query.push(format!("account={}", enc(&a)));
            }
            let path = format!("/v2/billing/summary?{}", query.join("&"));
            let summary = api.get(&path)?;
            match output {
                Output::Json => render::json(&mut out, &summary).map_err(io),
                Output::Table => billing(&mut out, &summary).map_err(io),
            }
        }
        Command::Connect {
            tenant,
            db,
            pooled,
            psql_args,
        } => psql(&api, &tenant, &db, pooled, &psql_args),
    }
}

fn login(args: &ClientArgs, name: &str, out: &mut impl Write) -> Result<(), ClientError> {
    let url = args.url.clone().ok_or_else(|| {
        ClientError::Usage("`spg99 login` needs the API's URL: --url or SPG99_URL".into())
    })?;
    let token = match std::env::var("SPG99_TOKEN").ok().filter(|t| !t.is_empty()) {
        Some(t) => t,
        None => {
            if std::io::stdin().is_terminal() {
                eprint!("API token for {url}: ");
            }
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .map_err(|e| ClientError::Local(format!("cannot read the token: {e}")))?;
            line.trim().to_owned()
        }
    };
    if token.is_empty() {
        return Err(ClientError::Usage(
            "no token given (SPG99_TOKEN, or on stdin)".into(),
        ));
    }
    let api = Api::new(&url, &token);
    let me = api.get("/v2/api-keys/me")?;
    let mut config = Config::load()?;
    config.profiles.insert(
        name.to_owned(),
        Profile {
            url: api.base.clone(),
            token,
        },
    );
    config.default = Some(name.to_owned());
    let path = config.save()?;
    match args.output {
        Output::Json => render::json(
            out,
            &json!({"profile": name, "url": api.base, "config": path, "key": me}),
        ),
        Output::Table => writeln!(
            out,
            "logged in to {} with key {} ({} scope); profile {name:?} saved in {}",
            api.base,
            render::cell(&me["key_id"]),
            render::cell(&me["scope"]),
            path.display()
        ),
    }
    .map_err(io)
}

/// The calling key's account, unless one is given.
fn account_of(api: &Api, given: Option<String>) -> Result<String, ClientError> {
    if let Some(a) = given {
        return Ok(a);
    }
    let me = api.get("/v2/api-keys/me")?;
    me["account_id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| ClientError::Usage("this key belongs to no account: give --account".into()))
}

fn keys(
    api: &Api,
    profile: Option<String>,
    command: KeysCommand,
    output: Output,
    out: &mut impl Write,
) -> Result<(), ClientError> {
    match command {
        KeysCommand::List { account } => {
            let account = account_of(api, account)?;
            let items = all(api, &format!("/v2/accounts/{}/api-keys", enc(&account)))?;
            show_list(
                out,
                output,
                items,
                &[
                    "key_id",
                    "name",
                    "scope",
                    "tenant",
                    "expires_at",
                    "revoked_at",
                ],
            )
        }
        KeysCommand::Issue {
            account,
            scope,
            tenant,
            permissions,
            expires_at,
            name,
        } => {
            let account = account_of(api, account)?;
            let mut perms = serde_json::Map::new();
            for p in permissions.iter().filter(|p| !p.is_empty()) {
                perms.insert(p.clone(), Value::Bool(true));
            }
            let mut body = json!({"scope": scope, "permissions": perms});
            for (field, value) in [
                ("tenant", tenant),
                ("expires_at", expires_at),
                ("name", name),
            ] {
                if let Some(v) = value {
                    body[field] = json!(v);
                }
            }
            let path = format!("/v2/accounts/{}/api-keys", enc(&account));
            show(out, output, &api.call("POST", &path, Some(&body))?.body)
        }
        KeysCommand::Me => show(out, output, &api.get("/v2/api-keys/me")?),
        KeysCommand::Rotate => {
            let rotated = api.call("POST", "/v2/api-keys/rotate", None)?.body;
            // The saved token no longer works: the profile gets the new one.
            if let (Some(name), Some(token)) = (profile, rotated["token"].as_str()) {
                let mut config = Config::load()?;
                if let Some(p) = config.profiles.get_mut(&name) {
                    p.token = token.to_owned();
                    config.save()?;
                }
            }
            show(out, output, &rotated)
        }
        KeysCommand::Revoke { key_id } => {
            let body = key_id.map_or_else(|| json!({}), |k| json!({ "key_id": k }));
            show(
                out,
                output,
                &api.call("POST", "/v2/api-keys/revoke", Some(&body))?.body,
            )
        }
    }
}

fn tenants(
    api: &Api,
    command: TenantsCommand,
    output: Output,
    out: &mut impl Write,
) -> Result<(), ClientError> {
    let at = |t: &str| format!("/v2/tenants/{}", enc(t));
    match command {
        TenantsCommand::Create { name, account } => {
            let mut body = json!({ "name": name });
            if let Some(a) = account {
                body["account"] = json!(a);
            }
            show(
                out,
                output,
                &api.call("POST", "/v2/tenants", Some(&body))?.body,
            )
        }
        TenantsCommand::List => {
            let items = all(api, "/v2/tenants")?;
            show_list(
                out,
                output,
                items,
                &[
                    "tenant",
                    "state",
                    "databases",
                    "pg_user",
                    "account_id",
                    "created_at",
                ],
            )
        }
        TenantsCommand::Get { tenant } => show(out, output, &api.get(&at(&tenant))?),
        TenantsCommand::Delete {
            tenant,
            cascade,
            wait,
        } => {
            let path = format!(
                "{}{}",
                at(&tenant),
                if cascade { "?cascade=true" } else { "" }
            );
            let begun = api.call("DELETE", &path, None)?;
            let settled = match wait.wait {
                true => settle(
                    api,
                    &at(&tenant),
                    &format!("tenant={}", enc(&tenant)),
                    &begun,
                    &wait,
                    |_| false,
                )?,
                false => begun.body,
            };
            show(out, output, &settled)
        }
        TenantsCommand::Credentials { tenant } => show(
            out,
            output,
            &api.get(&format!("{}/credentials", at(&tenant)))?,
        ),
        TenantsCommand::ResetPassword { tenant } => {
            let path = format!("{}/credentials/reset", at(&tenant));
            show(out, output, &api.call("POST", &path, None)?.body)
        }
    }
}

fn dbs(
    api: &Api,
    command: DbsCommand,
    output: Output,
    out: &mut impl Write,
) -> Result<(), ClientError> {
    let at = |t: &str, d: &str| format!("/v2/tenants/{}/dbs/{}", enc(t), enc(d));
    // Where a database rests: nothing in progress.
    let settled = |d: &Value| matches!(d["state"].as_str(), Some("stopped" | "running" | "failed"));
    match command {
        DbsCommand::Create {
            tenant,
            name,
            size,
            parent,
            at: point,
            ha,
            wait,
        } => {
            let mut body = json!({ "name": name, "size": size });
            if ha {
                body["ha"] = json!(true);
            }
            if let Some(parent) = parent {
                body["parent"] = json!(parent);
            }
            if let Some(point) = point {
                body["at"] = json!(point);
            }
            let path = format!("/v2/tenants/{}/dbs", enc(&tenant));
            let begun = api.call("POST", &path, Some(&body))?;
            let d = match wait.wait {
                true => {
                    let filter = format!("db={}", enc(render::cell(&begun.body["db_id"]).as_str()));
                    settle(api, &at(&tenant, &name), &filter, &begun, &wait, settled)?
                }
                false => begun.body,
            };
            show(out, output, &d)
        }
        DbsCommand::List { tenant } => {
            let items = all(api, &format!("/v2/tenants/{}/dbs", enc(&tenant)))?;
            show_list(out, output, items, DB_COLUMNS)
        }
        DbsCommand::Get { tenant, db } => show(out, output, &api.get(&at(&tenant, &db))?),
        DbsCommand::Restore {
            tenant,
            db,
            at: time,
            lsn,
            wait,
        } => {
            let body = match (time, lsn) {
                (Some(time), _) => json!({ "at": time }),
                (None, lsn) => json!({ "lsn": lsn }),
            };
            let begun = api.call(
                "POST",
                &format!("{}/restore", at(&tenant, &db)),
                Some(&body),
            )?;
            let d = match wait.wait {
                true => {
                    let filter = format!("db={}", enc(render::cell(&begun.body["db_id"]).as_str()));
                    let restored =
                        |d: &Value| matches!(d["state"].as_str(), Some("running" | "failed"));
                    settle(api, &at(&tenant, &db), &filter, &begun, &wait, restored)?
                }
                false => begun.body,
            };
            show(out, output, &d)
        }
        DbsCommand::Diff {
            tenant,
            db,
            against,
        } => {
            let against = match against {
                Some(a) => a,
                None => api.get(&at(&tenant, &db))?["parent"]
                    .as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| {
                        ClientError::Usage(format!(
                            "{db} is no branch (or its parent is gone): give --against"
                        ))
                    })?,
            };
            let r = api.get(&format!(
                "{}/schema-diff?against={}",
                at(&tenant, &db),
                enc(&against)
            ))?;
            match output {
                Output::Json => show(out, output, &r),
                Output::Table if r["identical"] == true => {
                    writeln!(out, "{db} has the same schema as {against}").map_err(io)
                }
                Output::Table => out
                    .write_all(r["diff"].as_str().unwrap_or_default().as_bytes())
                    .map_err(io),
            }
        }
        DbsCommand::Ha {
            tenant,
            db,
            setting,
            wait,
        } => {
            let on = setting == "on";
            let body = json!({ "enabled": on });
            let begun = api.call("POST", &format!("{}/ha", at(&tenant, &db)), Some(&body))?;
            let d = match wait.wait {
                true => {
                    let filter = format!("db={}", enc(render::cell(&begun.body["db_id"]).as_str()));
                    // On: protected (or not running: nothing to wait for); off: no standby.
                    let done = move |d: &Value| match on {
                        true => d["ha_protected"] == true || d["state"] != "running",
                        false => d["standby_state"] == "none",
                    };
                    settle(api, &at(&tenant, &db), &filter, &begun, &wait, done)?
                }
                false => begun.body,
            };
            show(out, output, &d)
        }
        DbsCommand::Reset { tenant, db, wait } => {
            let begun = api.call("POST", &format!("{}/reset", at(&tenant, &db)), None)?;
            let d = match wait.wait {
                true => {
                    let filter = format!("db={}", enc(render::cell(&begun.body["db_id"]).as_str()));
                    let reset =
                        |d: &Value| matches!(d["state"].as_str(), Some("running" | "failed"));
                    settle(api, &at(&tenant, &db), &filter, &begun, &wait, reset)?
                }
                false => begun.body,
            };
            show(out, output, &d)
        }
        DbsCommand::Delete { tenant, db, wait } => {
            let begun = api.call("DELETE", &at(&tenant, &db), None)?;
            let d = match wait.wait {
                true => {
                    let filter = format!("db={}", enc(render::cell(&begun.body["db_id"]).as_str()));
                    settle(api, &at(&tenant, &db), &filter, &begun, &wait, |_| false)?
                }
                false => begun.body,
            };
            show(out, output, &d)
        }
    }
}

/// Follows the event stream (filtered by `filter`) from the write that `begun` answered,
/// reading the resource at `path` after each event, until `done` says it has settled or it
/// is gone (a deletion: `{"deleted": true}`). A spinner on a terminal, nothing when piped.
fn settle(
    api: &Api,
    path: &str,
    filter: &str,
    begun: &Answer,
    wait: &Wait,
    done: impl Fn(&Value) -> bool,
) -> Result<Value, ClientError> {
    let deadline = Instant::now() + Duration::from_secs(wait.wait_timeout);
    let spinner = std::io::stderr().is_terminal();
    let mut spun = 0usize;
    let mut reader = None;
    let mut last = begun.version;
    loop {
        match api.get(path) {
            Ok(v) if done(&v) => {
                if spinner {
                    eprint!("\r\x1b[K");
                }
                if v["state"] == "failed" {
                    return Err(ClientError::Wait(format!(
                        "it settled as failed: {}",
                        render::cell(&v["failure_reason"])
                    )));
                }
                return Ok(v);
            }
            Ok(v) => {
                if spinner {
                    const FRAMES: &[char] = &['|', '/', '-', '\\'];
                    spun += 1;
                    eprint!("\r{} {}", FRAMES[spun % 4], render::cell(&v["state"]));
                }
            }
            Err(ClientError::Api { status: 404, .. }) => {
                if spinner {
                    eprint!("\r\x1b[K");
                }
                return Ok(json!({ "deleted": true }));
            }
            Err(e) => return Err(e),
        }
        if Instant::now() >= deadline {
            return Err(ClientError::Wait(format!(
                "not settled after {} s (--wait-timeout)",
                wait.wait_timeout
            )));
        }
        // The next event about it (or a bookmark, a few seconds later at most).
        if reader.is_none() {
            let stream = api.stream(&format!("/v2/events?{filter}"), last)?;
            reader = Some(BufReader::new(stream));
        }
        match next_frame(reader.as_mut().expect("opened above")) {
            Some(f) => last = f.id.or(last),
            None => reader = None,
        }
    }
}

fn events(
    api: &Api,
    args: &EventsArgs,
    output: Output,
    out: &mut impl Write,
) -> Result<(), ClientError> {
    let mut query = Vec::new();
    for (name, value) in [
        ("tenant", &args.tenant),
        ("db", &args.db),
        ("types", &args.types),
    ] {
        if let Some(v) = value {
            query.push(format!("{name}={}", enc(v)));
        }
    }
    // Without --follow: the log so far (from --since), ending at the first bookmark, which
    // the stream sends once it has caught up.
    let mut last = match (args.since, args.follow) {
        (Some(s), _) => Some(s),
        (None, false) => Some(0),
        // From now on: after the seq any answer reflects.
        (None, true) => api.call("GET", "/v2/api-keys/me", None)?.version,
    };
    let path = format!("/v2/events?{}", query.join("&"));
    let mut headers_shown = false;
    let mut backoff = Duration::from_millis(500);
    loop {
        let stream = match api.stream(&path, last) {
            Ok(s) => s,
            Err(ClientError::Transport(e))
            | Err(ClientError::Api {
                message: e,
                status: 503,
                ..
            }) if args.follow => {
                eprintln!("spg99: the event stream is unavailable ({e}); trying again");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
            Err(e) => return Err(e),
        };
        backoff = Duration::from_millis(500);
        let mut reader = BufReader::new(stream);
        while let Some(f) = next_frame(&mut reader) {
            if let Some(id) = f.id {
                last = Some(id);
            }
            if f.event == "bookmark" {
                if !args.follow {
                    return Ok(());
                }
                continue;
            }
            let v: Value = serde_json::from_str(&f.data)
                .map_err(|e| ClientError::Transport(format!("an event that is not JSON: {e}")))?;
            match output {
                Output::Json => render::json(out, &v),
                Output::Table => if !headers_shown {
                    headers_shown = true;
                    writeln!(
                        out,
                        "{:<8}  {:<27}  {:<28}  {:<16}  DB",
                        "SEQ", "AT", "TYPE", "TENANT"
                    )
                } else {
                    Ok(())
                }
                .and_then(|_| {
                    writeln!(
                        out,
                        "{:<8}  {:<27}  {:<28}  {:<16}  {}",
                        render::cell(&v["seq"]),
                        render::cell(&v["at"]),
                        render::cell(&v["type"]),
                        render::cell(&v["tenant"]),
                        render::cell(&v["db_id"])
                    )
                }),
            }
            .and_then(|_| out.flush())
            .map_err(io)?;
        }
        if !args.follow {
            return Err(ClientError::Transport(
                "the event stream ended before catching up".into(),
            ));
        }
        eprintln!(
            "spg99: the event stream dropped; resuming after seq {}",
            last.map_or("-".into(), |s| s.to_string())
        );
        std::thread::sleep(backoff);
    }
}

fn billing(out: &mut impl Write, s: &Value) -> std::io::Result<()> {
    writeln!(
        out,
        "period {} (as of {}): {} compute seconds",
        render::cell(&s["period"]),
        render::cell(&s["as_of"]),
        render::cell(&s["compute_seconds"])
    )?;
    let profiles: Vec<Vec<String>> = s["by_profile"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| vec![k.clone(), render::cell(v)])
                .collect()
        })
        .unwrap_or_default();
    writeln!(out)?;
    render::table(out, &["profile", "seconds"], &profiles)?;
    writeln!(out)?;
    let dbs = s["databases"].as_array().cloned().unwrap_or_default();
    render::list(out, &dbs, &["tenant", "name", "compute_seconds"])
}

/// Runs `psql` on the database's DSN (or its pooled one), in place of this process.
fn psql(
    api: &Api,
    tenant: &str,
    db: &str,
    pooled: bool,
    extra: &[String],
) -> Result<(), ClientError> {
    use std::os::unix::process::CommandExt;
    let creds = api.get(&format!("/v2/tenants/{}/credentials", enc(tenant)))?;
    // The database must exist (a clear 404 here rather than psql's error later).
    api.get(&format!("/v2/tenants/{}/dbs/{}", enc(tenant), enc(db)))?;
    let field = if pooled {
        "pooled_dsn_template"
    } else {
        "dsn_template"
    };
    let template = creds[field]
        .as_str()
        .ok_or_else(|| ClientError::Transport(format!("credentials without a {field}")))?;
    let dsn = template.replace("<db-name>", &enc(db));
    let err = std::process::Command::new("psql")
        .arg(dsn)
        .args(extra)
        .exec();
    Err(ClientError::Local(format!(
        "cannot run psql ({err}): install PostgreSQL's client (Debian: apt-get install postgresql-client)"
    )))
}
