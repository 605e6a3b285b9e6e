//! The seeds' good working scenario, end to end, as automation would run it.

use serde_json::json;

use crate::helpers::{tempdir, Start, ROOT_TOKEN};

pub const DESCRIBE_FIELDS: &[&str] = &[
    "db_id",
    "name",
    "tenant",
    "size",
    "state",
    "timeline",
    "created_at",
    "current_scale",
    "target_scale",
    "current_profile",
    "target_profile",
    "candidate_profile",
    "candidate_worker_id",
    "candidate_writer_term",
    "scale_state",
    "freeze_new_checkouts",
    "lease_control_epoch",
    "autoscale_cooldown_until",
    "scale_phase_started_at",
    "scale_phase_deadline_at",
    "scale_failure_reason",
    "active_connections",
    "worker_id",
    "backend_addr",
    "writer_term",
    "phase_deadline_at",
    "failure_reason",
    "storage_bytes",
    "history_start_at",
    "recoverable_until",
    "last_backup_at",
    "storage_warning",
    "restore",
    "last_restore",
    "parent",
    "parent_db_id",
    "parent_at",
    "branch_made",
    "ha",
    "ha_protected",
    "ha_unprotected_reason",
    "standby_worker_id",
    "standby_writer_term",
    "standby_state",
    "replication_lag_bytes",
    "failovers",
    "last_failover_at",
];

#[test]
fn the_good_working_scenario() {
    let tmp = tempdir();
    let s = Start::new(&tmp.path().join("data"))
        .env("SPG99_GATEWAY_HOST", "gw.example.net:5432")
        .spawn();

    // Create account → issue account key → save contact.
    let account = s.create_account("Acme");
    let key = s.post(
        &format!("/v2/accounts/{account}/api-keys"),
        ROOT_TOKEN,
        json!({"scope": "account", "name": "automation", "permissions": {
            "can_create_tenant": true, "can_create_db": true, "can_delete": true}}),
    );
    assert_eq!(key.status, 201);
    let token = key.body["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("spg99_"));
    assert_eq!(key.body["scope"], "account");
    assert_eq!(key.body["permissions"]["can_scale"], false);
    let contact = s.post(
        "/v2/account/contact",
        &token,
        json!({"email": "ops@acme.io"}),
    );
    assert_eq!(contact.status, 200, "{contact:?}");
    // The Console's login check: the profile's email.
    let profile = s.get("/v2/account/profile", &token);
    assert_eq!(profile.body["email"], "ops@acme.io");
    assert_eq!(profile.body["account_id"], account.as_str());

    // Create tenant → save credentials.
    let tenant = s.post("/v2/tenants", &token, json!({"name": "shop"}));
    assert_eq!(tenant.status, 201);
    let pg_user = tenant.body["pg_user"].as_str().unwrap().to_owned();
    let pg_password = tenant.body["pg_password"].as_str().unwrap().to_owned();
    assert!(pg_password.len() >= 24);
    assert_eq!(
        tenant.body["dsn_template"],
        format!("postgres://{pg_user}:{pg_password}@gw.example.net:5432/<db-name>?sslmode=require")
    );

    // Create db → describe shows every field.
    let created = s.post(
        "/v2/tenants/shop/dbs",
        &token,
        json!({"name": "app", "size": "L1", "initial_scale": 1}),
    );
    assert_eq!(created.status, 201, "{created:?}");
    assert_eq!(created.body["state"], "stopped");
    let db_id = created.body["db_id"].as_str().unwrap().to_owned();
    let describe = s.get("/v2/tenants/shop/dbs/app", &token);
    assert_eq!(describe.status, 200);
    let fields = describe.body.as_object().unwrap();
    for f in DESCRIBE_FIELDS {
        assert!(fields.contains_key(*f), "describe lacks {f}: {fields:?}");
    }
    assert_eq!(fields.len(), DESCRIBE_FIELDS.len(), "{fields:?}");
    assert_eq!(describe.body["size"], "L1");
    assert_eq!(describe.body["scale_state"], "STABLE");
    assert_eq!(describe.body["current_scale"], 0);
    assert!(describe.body["worker_id"].is_null());
    assert!(describe.header("x-resource-version").is_some());
    assert_eq!(
        s.get(&format!("/v2/dbs/{db_id}"), &token).body,
        describe.body
    );
    let list = s.get("/v2/tenants/shop/dbs", &token);
    assert_eq!(list.body["items"][0]["db_id"], db_id.as_str());

    // Read credentials again: the same.
    let creds = s.get("/v2/tenants/shop/credentials", &token);
    assert_eq!(creds.body["pg_user"], pg_user.as_str());
    assert_eq!(creds.body["pg_password"], pg_password.as_str());
    assert_eq!(creds.body["dsn_template"], tenant.body["dsn_template"]);

    // Delete db: 202, deleting, then gone.
    let deleted = s.delete("/v2/tenants/shop/dbs/app", &token);
    assert_eq!(deleted.status, 202);
    assert_eq!(deleted.body["state"], "deleting");
    s.wait_for_status("/v2/tenants/shop/dbs/app", &token, 404);

    // Delete tenant with cascade (with a database left in it).
    s.create_db(&token, "shop", "other");
    let without = s.delete("/v2/tenants/shop", &token);
    assert_eq!(
        (without.status, without.code()),
        (409, "tenant_has_databases")
    );
    let gone = s.delete("/v2/tenants/shop?cascade=true", &token);
    assert_eq!(gone.status, 202);
    assert_eq!(gone.body["state"], "deleting");
    s.wait_for_status("/v2/tenants/shop", &token, 404);
    assert_eq!(s.get(&format!("/v2/dbs/{db_id}"), &token).status, 404);
    // The name is free again.
    assert_eq!(
        s.post("/v2/tenants", &token, json!({"name": "shop"}))
            .status,
        201
    );
}

#[test]
fn manual_lifecycle_is_refused_even_with_can_scale() {
    let tmp = tempdir();
    let s = Start::new(&tmp.path().join("data")).spawn();
    let account = s.create_account("a");
    let token = s.issue_key(
        ROOT_TOKEN,
        &account,
        json!({"scope": "account", "permissions": crate::helpers::all_permissions()}),
    );
    s.create_tenant(&token, "t");
    s.create_db(&token, "t", "d");
    for action in ["start", "stop", "scale"] {
        let r = s.post(&format!("/v2/tenants/t/dbs/d/{action}"), &token, json!({}));
        assert_eq!(
            (r.status, r.code()),
            (409, "lifecycle_automatic"),
            "{action}"
        );
        assert!(r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("first connection"));
    }
    let r = s.post(
        "/v2/tenants/t/dbs",
        &token,
        json!({"name": "now", "size": "L1", "start_immediately": true}),
    );
    assert_eq!((r.status, r.code()), (422, "invalid_value"));
    assert_eq!(r.body["error"]["field"], "start_immediately");
}

#[test]
fn account_deletion_revokes_keys_at_once_and_removes_everything_after() {
    let tmp = tempdir();
    let s = Start::new(&tmp.path().join("data")).spawn();
    let account = s.create_account("doomed");
    let token = s.issue_key(
        ROOT_TOKEN,
        &account,
        json!({"scope": "account", "permissions": crate::helpers::all_permissions()}),
    );
    let other = s.issue_key(ROOT_TOKEN, &account, json!({"scope": "account"}));
    s.create_tenant(&token, "t1");
    s.create_db(&token, "t1", "d1");
    let no_perm = s.post("/v2/account/delete", &other, json!({}));
    assert_eq!(
        (no_perm.status, no_perm.code()),
        (403, "missing_permission")
    );
    assert!(no_perm.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("can_delete"));

    let r = s.post("/v2/account/delete", &token, json!({}));
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(r.body["state"], "deleting");
    // Keys stop at once.
    assert_eq!(s.get("/v2/api-keys/me", &token).status, 401);
    assert_eq!(s.get("/v2/api-keys/me", &other).status, 401);
    // Everything goes, asynchronously.
    s.wait_for_status(&format!("/v2/accounts/{account}"), ROOT_TOKEN, 404);
    assert_eq!(s.get("/v2/tenants/t1", ROOT_TOKEN).status, 404);
    assert_eq!(
        s.get("/v2/admin/state", ROOT_TOKEN).body["counts"]["dbs"],
        0
    );
}
