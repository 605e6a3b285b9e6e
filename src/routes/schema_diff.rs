//! The schemas of two databases of a tenant, compared: for reviewing a migration made on a
//! branch against its parent.
//!
//! Each side is read by PostgreSQL's own `pg_dump --schema-only`, connected through the
//! Gateway with the tenant's credentials, as the tenant's applications connect (a stopped
//! database starts for it). The dumps are normalised (comments, `SET` lines and blank lines
//! dropped, owners and privileges left out) and compared line by line into a unified diff.

use std::time::Duration;

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::access;
use crate::domain::ResourceName;
use crate::http::error::ErrorBody;
use crate::http::{at_version, ApiError, AppState, Caller};

/// How long one side's `pg_dump` may take (a cold start included).
const DUMP_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DiffQuery {
    /// The database to compare against (of the same tenant): the diff goes from its schema
    /// to this one's.
    against: String,
}

/// The two schemas compared.
#[derive(Debug, Serialize, ToSchema)]
pub struct SchemaDiff {
    db: String,
    against: String,
    /// Whether the normalised schemas are the same.
    identical: bool,
    /// A unified diff from `against`'s schema (`---`) to `db`'s (`+++`); empty when identical.
    diff: String,
}

/// A unified diff of two databases' schemas (`pg_dump --schema-only`, normalised).
#[utoipa::path(get, path = "/v2/tenants/{tenant}/dbs/{db}/schema-diff", tag = "databases", operation_id = "schemaDiff", params(("tenant" = String, Path), ("db" = String, Path), DiffQuery), responses((status = 200, body = SchemaDiff), (status = 404, description = "the tenant, the database or `against` is not found", body = ErrorBody), (status = 409, description = "`schema_unreadable`: a side's schema cannot be read now (it is failed, being deleted or restored, or does not start)", body = ErrorBody), (status = 422, description = "`invalid_value`: `against` is no database name", body = ErrorBody)), security(("bearer" = [])))]
pub async fn schema_diff(
    app: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(String, String)>,
    query: web::Query<DiffQuery>,
) -> Result<HttpResponse, ApiError> {
    let against = ResourceName::parse("against", &query.against)?;
    let (user, password, db, seq) = {
        let state = app.shared.read();
        let (t, d) = access::db(&state, &caller.key, &path.0, &path.1)?;
        access::db(&state, &caller.key, &path.0, against.as_str())?;
        let password = super::tenants::password(&app.secrets, t)?;
        (
            t.pg_user.clone(),
            password,
            d.name.to_string(),
            state.last_seq,
        )
    };
    let dump = |name: String| dump(&app.hosts.gateway, &user, &password, name);
    let (theirs, ours) = tokio::join!(dump(against.as_str().to_owned()), dump(db.clone()));
    let (theirs, ours) = (theirs?, ours?);
    let diff = similar::TextDiff::from_lines(&theirs, &ours)
        .unified_diff()
        .context_radius(3)
        .header(against.as_str(), &db)
        .to_string();
    let body = SchemaDiff {
        identical: theirs == ours,
        diff: if theirs == ours { String::new() } else { diff },
        db,
        against: against.as_str().to_owned(),
    };
    Ok(at_version(HttpResponse::Ok(), seq).json(body))
}

/// `db`'s schema, normalised, by `pg_dump` through the Gateway at `gateway` (`host:port`).
async fn dump(gateway: &str, user: &str, password: &str, db: String) -> Result<String, ApiError> {
    let unreadable = |why: String| {
        ApiError::new(
            actix_web::http::StatusCode::CONFLICT,
            "schema_unreadable",
            format!("the schema of database {db:?} cannot be read now: {why}"),
        )
    };
    let bin = spg99_worker::postgres::find_bin(None)
        .map(|b| b.join("pg_dump"))
        .ok_or_else(|| unreadable("pg_dump is not installed with this control plane".into()))?;
    let (host, port) = gateway.rsplit_once(':').unwrap_or((gateway, "5432"));
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args(["--schema-only", "--no-owner", "--no-privileges", "--dbname"])
        .arg(format!(
            "host={host} port={port} user={user} dbname={db} sslmode=require connect_timeout=60 \
             application_name=spg99-schema-diff"
        ))
        .env("PGPASSWORD", password)
        .kill_on_drop(true);
    let out = tokio::time::timeout(DUMP_TIMEOUT, cmd.output())
        .await
        .map_err(|_| unreadable(format!("pg_dump took over {} s", DUMP_TIMEOUT.as_secs())))?
        .map_err(|e| unreadable(format!("cannot run pg_dump: {e}")))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let err = err.lines().next().unwrap_or("pg_dump failed").trim();
        return Err(unreadable(
            err.trim_start_matches("pg_dump: error: ").to_owned(),
        ));
    }
    Ok(normalise(&String::from_utf8_lossy(&out.stdout)))
}

/// The dump without what does not describe the schema: comments, session settings, and
/// runs of blank lines.
fn normalise(dump: &str) -> String {
    let mut out = String::new();
    let mut blank = true;
    for line in dump.lines() {
        let skip = line.starts_with("--")
            || line.starts_with("SET ")
            || line.starts_with("SELECT pg_catalog.set_config(")
            || line.starts_with("\\restrict")
            || line.starts_with("\\unrestrict");
        if skip {
            continue;
        }
        let empty = line.trim().is_empty();
        if empty && blank {
            continue;
        }
        blank = empty;
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out.trim_end().to_owned() + "\n"
}

#[cfg(test)]
mod tests {
    use super::normalise;

    #[test]
    fn a_dump_is_compared_without_its_comments_settings_and_blank_runs() {
        let dump = "--\n-- PostgreSQL database dump\n--\n\nSET statement_timeout = 0;\n\
                    SELECT pg_catalog.set_config('search_path', '', false);\n\n\n\
                    CREATE TABLE public.t (\n    i integer\n);\n\n\n-- done\n";
        assert_eq!(
            normalise(dump),
            "CREATE TABLE public.t (\n    i integer\n);\n"
        );
    }
}
