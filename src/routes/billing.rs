//! `GET /v2/billing/summary`: compute and storage used by an account, from the log.
//!
//! A database is billed while a writer serves it (from `db.started` to `db.stopped`, and
//! from a handoff's cutover on the new profile), per profile, per calendar month (UTC); and
//! for its size in the storage repository, in GiB-hours, at the size each backup measured
//! from then on. The projections fold closed intervals as the events arrive; the summary
//! adds the open interval of each database, up to the time of the request.
//!
//! Account keys see their account; tenant keys see their tenant's databases; global keys name
//! the account with `?account=`. `?period=YYYY-MM` picks another month (default: the
//! current one).

use std::collections::BTreeMap;

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use spg99_events::{KeyScope, Timestamp};
use spg99_projections::billing::{period_name, period_of, period_start, split};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::domain::Invalid;
use crate::http::error::ErrorBody;
use crate::http::{at_version, rfc3339, ApiError, AppState, Caller};

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SummaryQuery {
    /// `YYYY-MM`, from 1970-01 to 9999-11; default: the current month.
    #[param(pattern = r"^(?!9999-12)(19[7-9][0-9]|[2-9][0-9]{3})-(0[1-9]|1[0-2])$")]
    period: Option<String>,
    /// The account, for global keys.
    account: Option<Uuid>,
}

#[derive(Debug, Default, Serialize, ToSchema)]
pub struct DbUsage {
    db_id: Uuid,
    tenant: String,
    name: String,
    compute_seconds: f64,
    by_profile: BTreeMap<String, f64>,
    /// Its size in the storage repository over the period, in GiB-hours.
    storage_gib_hours: f64,
    /// A writer serves it now: its figures grow until it stops.
    running: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Summary {
    account_id: Uuid,
    period: String,
    period_start: String,
    period_end: String,
    /// The time the open intervals were counted up to.
    as_of: String,
    compute_seconds: f64,
    by_profile: BTreeMap<String, f64>,
    storage_gib_hours: f64,
    databases: Vec<DbUsage>,
}

/// Byte-microseconds as GiB-hours.
fn gib_hours(byte_micros: u128) -> f64 {
    byte_micros as f64 / (1024.0 * 1024.0 * 1024.0) / 3.6e9
}

fn seconds(micros: i64) -> f64 {
    micros as f64 / 1e6
}

fn parse_period(raw: &str) -> Result<u32, Invalid> {
    let bad = || Invalid {
        field: "period",
        message: "YYYY-MM, from 1970-01 to 9999-11".into(),
    };
    let (y, m) = raw.split_once('-').ok_or_else(bad)?;
    let (y, m): (u32, u32) = (y.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    // The last period is 9999-11: 9999-12 would end in year 10000, which RFC 3339 cannot write.
    if !(1970..=9999).contains(&y)
        || !(1..=12).contains(&m)
        || raw.len() != 7
        || (y, m) == (9999, 12)
    {
        return Err(bad());
    }
    Ok((y - 1970) * 12 + m - 1)
}

#[utoipa::path(get, path = "/v2/billing/summary", tag = "billing", operation_id = "getBillingSummary", params(SummaryQuery), responses((status = 200, body = Summary), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)), security(("bearer" = [])))]
pub async fn summary(
    app: web::Data<AppState>,
    caller: Caller,
    query: web::Query<SummaryQuery>,
) -> Result<HttpResponse, ApiError> {
    let key = &caller.key;
    let now = app.clock.now();
    let period = match &query.period {
        Some(p) => parse_period(p)?,
        None => period_of(now),
    };
    let (account, only_tenant) = match (key.scope, query.account) {
        (KeyScope::Global, Some(a)) => (a, None),
        (KeyScope::Global, None) => {
            return Err(Invalid {
                field: "account",
                message: "a global key must name the account (?account=<id>)".into(),
            }
            .into())
        }
        (KeyScope::Account(a), q) if q.is_none_or(|q| q == a) => (a, None),
        (KeyScope::Tenant { account, tenant }, q) if q.is_none_or(|q| q == account) => {
            (account, Some(tenant))
        }
        _ => return Err(ApiError::not_found("account")),
    };
    let state = app.shared.read();
    if !state.accounts.contains_key(&account) {
        return Err(ApiError::not_found("account"));
    }
    let mut dbs: BTreeMap<Uuid, DbUsage> = BTreeMap::new();
    let add = |dbs: &mut BTreeMap<Uuid, DbUsage>,
               db_id: Uuid,
               tenant: &str,
               name: &str,
               profile: Option<&str>,
               micros: i64,
               byte_micros: u128| {
        let row = dbs.entry(db_id).or_insert_with(|| DbUsage {
            db_id,
            tenant: tenant.to_owned(),
            name: name.to_owned(),
            ..DbUsage::default()
        });
        if let Some(profile) = profile {
            *row.by_profile.entry(profile.to_owned()).or_default() += seconds(micros);
            row.compute_seconds += seconds(micros);
        }
        row.storage_gib_hours += gib_hours(byte_micros);
    };
    let from = (account, period, Uuid::nil());
    for ((_, _, db_id), usage) in state
        .usage
        .range(from..)
        .take_while(|((a, p, _), _)| *a == account && *p == period)
    {
        if only_tenant.is_some_and(|t| t != usage.tenant_id) {
            continue;
        }
        for (profile, micros) in &usage.by_profile {
            add(
                &mut dbs,
                *db_id,
                &usage.tenant,
                &usage.db,
                Some(profile),
                *micros,
                0,
            );
        }
        add(
            &mut dbs,
            *db_id,
            &usage.tenant,
            &usage.db,
            None,
            0,
            usage.storage_byte_micros,
        );
    }
    let mut running = Vec::new();
    for t in state
        .tenants
        .values()
        .filter(|t| t.account == account && only_tenant.is_none_or(|o| o == t.id))
    {
        for db in state.dbs_of(t.id) {
            let s = db.stored();
            if let (Some(since), true) = (s.bytes_since, s.bytes > 0) {
                for (p, micros) in split(since, now.max(since)) {
                    if p == period {
                        let byte_micros = u128::from(s.bytes) * micros.max(0) as u128;
                        add(&mut dbs, db.id, &t.name, &db.name, None, 0, byte_micros);
                    }
                }
            }
            let (Some(since), Some(w)) = (db.live.running_since, db.live.writer.as_ref()) else {
                continue;
            };
            running.push(db.id);
            for (p, micros) in split(since, now.max(since)) {
                if p == period {
                    add(
                        &mut dbs,
                        db.id,
                        &t.name,
                        &db.name,
                        Some(&w.profile),
                        micros,
                        0,
                    );
                }
            }
        }
    }
    let mut by_profile: BTreeMap<String, f64> = BTreeMap::new();
    let mut total = 0.0;
    let mut storage = 0.0;
    let mut databases: Vec<DbUsage> = dbs.into_values().collect();
    for d in &mut databases {
        d.running = running.contains(&d.db_id);
        total += d.compute_seconds;
        storage += d.storage_gib_hours;
        for (p, s) in &d.by_profile {
            *by_profile.entry(p.clone()).or_default() += s;
        }
    }
    let summary = Summary {
        account_id: account,
        period: period_name(period),
        period_start: rfc3339(period_start(period)),
        period_end: rfc3339(period_start(period + 1)),
        as_of: rfc3339(Timestamp::from_micros(now.as_micros())),
        compute_seconds: total,
        by_profile,
        storage_gib_hours: storage,
        databases,
    };
    Ok(at_version(HttpResponse::Ok(), state.last_seq).json(summary))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_parse_strictly() {
        assert_eq!(parse_period("1970-01").unwrap(), 0);
        assert_eq!(parse_period("2026-11").unwrap(), 56 * 12 + 10);
        assert!(parse_period("9999-11").is_ok());
        for bad in [
            "2026-13", "2026-1", "1969-12", "2026/11", "x", "2026-00", "9999-12",
        ] {
            assert!(parse_period(bad).is_err(), "{bad}");
        }
    }
}
