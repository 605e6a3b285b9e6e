//! The rules of the public API beyond the route table: uniqueness under concurrency, keys that
//! cannot escalate, rotation and revocation, pagination, idempotency (across a restart), bad
//! input of every shape, and secrets that never leak.

use std::sync::{Arc, Barrier};

use serde_json::{json, Value};

use crate::helpers::{
    all_permissions, assert_no_plaintext, tempdir, Fixture, Server, Start, ROOT_TOKEN,
};

#[test]
fn fifty_parallel_creates_of_one_tenant_name_give_one_tenant() {
    let tmp = tempdir();
    let fx = Fixture::new(&tmp.path().join("data"));
    let barrier = Arc::new(Barrier::new(50));
    let statuses: Vec<(u16, String)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..50)
            .map(|_| {
                let barrier = barrier.clone();
                let (s, token) = (&fx.server, &fx.account_key);
                scope.spawn(move || {
                    barrier.wait();
                    let r = s.post("/v2/tenants", token, json!({"name": "contested"}));
                    (r.status, r.code().to_owned())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let created = statuses.iter().filter(|(s, _)| *s == 201).count();
    let conflicts = statuses
        .iter()
        .filter(|(s, c)| *s == 409 && c == "tenant_exists")
        .count();
    assert_eq!((created, conflicts), (1, 49), "{statuses:?}");
    let list = fx.server.get("/v2/tenants", &fx.account_key);
    assert_eq!(list.body["items"].as_array().unwrap().len(), 1);
}

#[test]
fn no_key_can_mint_a_broader_key() {
    let tmp = tempdir();
    let fx = Fixture::new(&tmp.path().join("data"));
    let s = &fx.server;
    let path = format!("/v2/accounts/{}/api-keys", fx.account);
    let narrow = s.issue_key(
        ROOT_TOKEN,
        &fx.account,
        json!({"scope": "account", "permissions": {"can_create_db": true}}),
    );
    let cases = [
        (json!({"scope": "global"}), 403, "scope_escalation"),
        (
            json!({"scope": "account", "permissions": {"can_delete": true}}),
            403,
            "permission_escalation",
        ),
    ];
    for (body, status, code) in cases {
        let r = s.post(&path, &narrow, body.clone());
        assert_eq!((r.status, r.code()), (status, code), "{body}");
    }
    // Within its own permissions it may.
    let ok = s.post(
        &path,
        &narrow,
        json!({"scope": "account", "permissions": {"can_create_db": true}}),
    );
    assert_eq!(ok.status, 201);

    // A key that expires cannot mint one that lives longer.
    let soon = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let later = (chrono::Utc::now() + chrono::Duration::hours(2)).to_rfc3339();
    let expiring = s.issue_key(
        ROOT_TOKEN,
        &fx.account,
        json!({"scope": "account", "expires_at": soon}),
    );
    for body in [
        json!({"scope": "account"}),
        json!({"scope": "account", "expires_at": later}),
    ] {
        let r = s.post(&path, &expiring, body);
        assert_eq!((r.status, r.code()), (422, "invalid_value"));
        assert_eq!(r.body["error"]["field"], "expires_at");
    }

    // Tenant keys mint nothing, not even a tenant key for their own tenant.
    s.create_tenant(&fx.account_key, "t");
    let tenant_key = s.issue_key(
        &fx.account_key,
        &fx.account,
        json!({"scope": "tenant", "tenant": "t", "permissions": all_permissions()}),
    );
    let r = s.post(
        &path,
        &tenant_key,
        json!({"scope": "tenant", "tenant": "t"}),
    );
    assert_eq!((r.status, r.code()), (403, "tenant_key_cannot_issue"));
    let me = s.get("/v2/api-keys/me", &tenant_key);
    assert_eq!(me.body["scope"], "tenant");
    assert_eq!(me.body["tenant"], "t");
    assert!(me.body.get("token").is_none() && me.body.get("secret_hash").is_none());
}

#[test]
fn rotation_kills_the_old_secret_and_revocation_the_key() {
    let tmp = tempdir();
    let fx = Fixture::new(&tmp.path().join("data"));
    let s = &fx.server;
    let old = s.issue_key(&fx.account_key, &fx.account, json!({"scope": "account"}));
    let rotated = s.post("/v2/api-keys/rotate", &old, json!({}));
    assert_eq!(rotated.status, 200);
    let new = rotated.body["token"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    assert_eq!(s.get("/v2/api-keys/me", &old).status, 401);
    let me = s.get("/v2/api-keys/me", &new);
    assert_eq!(me.status, 200);
    assert_eq!(me.body["key_id"], rotated.body["key_id"]);

    // An account key revokes another key of its account by id...
    let key_id = me.body["key_id"].as_str().unwrap().to_owned();
    let r = s.post(
        "/v2/api-keys/revoke",
        &fx.account_key,
        json!({"key_id": key_id}),
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body["revoked_at"].is_string());
    assert_eq!(s.get("/v2/api-keys/me", &new).code(), "token_revoked");
    // ...but not a key of another account, which does not exist for it.
    let b = s.create_account("b");
    let b_key = s.issue_key(ROOT_TOKEN, &b, json!({"scope": "account"}));
    let b_id = s.get("/v2/api-keys/me", &b_key).body["key_id"].clone();
    let r = s.post(
        "/v2/api-keys/revoke",
        &fx.account_key,
        json!({"key_id": b_id}),
    );
    assert_eq!(r.status, 404);
    assert_eq!(s.get("/v2/api-keys/me", &b_key).status, 200);
}

#[test]
fn an_account_lists_its_keys_and_the_operator_every_account() {
    let tmp = tempdir();
    let fx = Fixture::new(&tmp.path().join("data"));
    let s = &fx.server;
    let revoked = s.issue_key(&fx.account_key, &fx.account, json!({"scope": "account"}));
    let revoked_id = s.get("/v2/api-keys/me", &revoked).body["key_id"].clone();
    s.post("/v2/api-keys/revoke", &revoked, json!({}));
    let b = s.create_account("b");
    s.issue_key(ROOT_TOKEN, &b, json!({"scope": "account"}));

    // Given account A with two keys, one revoked, and account B with its own key, when A's
    // key lists A's keys, then it sees exactly A's two, the revoked one marked, no secret.
    let r = s.get(
        &format!("/v2/accounts/{}/api-keys", fx.account),
        &fx.account_key,
    );
    assert_eq!(r.status, 200, "{r:?}");
    let items = r.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{items:?}");
    let gone = items.iter().find(|k| k["key_id"] == revoked_id).unwrap();
    assert!(gone["revoked_at"].is_string());
    assert!(items.iter().all(|k| k.get("token").is_none()));
    assert!(
        !r.body.to_string().contains("spg99_"),
        "no token in a list: {}",
        r.body
    );
    // B's keys do not exist for A.
    let r = s.get(&format!("/v2/accounts/{b}/api-keys"), &fx.account_key);
    assert_eq!(r.status, 404);

    // The operator pages through every account, each once.
    let seen: Vec<String> = s
        .accounts(1)
        .iter()
        .map(|a| a["account_id"].as_str().unwrap().to_owned())
        .collect();
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted, "ordered by id");
    assert!(seen.contains(&fx.account) && seen.contains(&b), "{seen:?}");
    assert_eq!(
        seen.len(),
        sorted
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    );
}

#[test]
fn lists_page_through_everything_once() {
    let tmp = tempdir();
    let fx = Fixture::new(&tmp.path().join("data"));
    let s = &fx.server;
    s.create_tenant(&fx.account_key, "t");
    let mut names: Vec<String> = (0..23).map(|i| format!("db{i:02}")).collect();
    for n in &names {
        s.create_db(&fx.account_key, "t", n);
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            None => "/v2/tenants/t/dbs?limit=5".to_owned(),
            Some(c) => format!("/v2/tenants/t/dbs?limit=5&cursor={c}"),
        };
        let r = s.get(&path, &fx.account_key);
        assert_eq!(r.status, 200, "{r:?}");
        pages += 1;
        for item in r.body["items"].as_array().unwrap() {
            seen.push(item["name"].as_str().unwrap().to_owned());
        }
        match r.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    names.sort();
    assert_eq!(seen, names);
    assert_eq!(pages, 5);
}

#[test]
fn an_idempotent_retry_gets_the_first_answer_even_after_a_restart() {
    let tmp = tempdir();
    let dir = tmp.path().join("data");
    let fx = Fixture::new(&dir);
    let (account, key) = (fx.account.clone(), fx.account_key.clone());
    let post = |s: &Server, idem: &str, body: &Value| {
        let resp = ureq::post(&s.url("/v2/tenants"))
            .set("Authorization", &format!("Bearer {key}"))
            .set("Idempotency-Key", idem)
            .send_json(body.clone());
        match resp {
            Ok(r) | Err(ureq::Error::Status(_, r)) => {
                let replayed = r.header("idempotent-replayed").is_some();
                let status = r.status();
                (status, r.into_json::<Value>().unwrap(), replayed)
            }
            Err(e) => panic!("{e}"),
        }
    };
    let body = json!({"name": "once"});
    let first = post(&fx.server, "create-once-1", &body);
    assert_eq!((first.0, first.2), (201, false));
    let again = post(&fx.server, "create-once-1", &body);
    assert_eq!((again.0, &again.1, again.2), (201, &first.1, true));
    // The same key with another body is a conflict; the tenant was created once.
    let other = post(&fx.server, "create-once-1", &json!({"name": "twice"}));
    assert_eq!(other.0, 409);
    assert_eq!(other.1["error"]["code"], "idempotency_key_reused");
    drop(fx);

    let s = Start::new(&dir).spawn();
    let after = post(&s, "create-once-1", &body);
    assert_eq!(
        (after.0, &after.1, after.2),
        (201, &first.1, true),
        "after restart"
    );
    let list = s.get("/v2/tenants", ROOT_TOKEN);
    assert_eq!(list.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(list.body["items"][0]["account_id"], account.as_str());
    // The recorded answer holds the password, but the log holds it sealed.
    let password = first.1["pg_password"].as_str().unwrap().to_owned();
    assert_no_plaintext(&dir, &[&password]);
}

/// Bad input of every shape gets its documented 4xx, the server stays up, and nothing is
/// written to the log.
#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let tmp = tempdir();
    let fx = Fixture::new(&tmp.path().join("data"));
    let s = &fx.server;
    s.create_tenant(&fx.account_key, "t");
    let (_, before) = s.fingerprint();
    let k = fx.account_key.as_str();
    let long = "a".repeat(64);
    let huge_token = "x".repeat(10_000);
    // method, path, token, body (null: none), status, code
    type Case<'a> = (&'a str, String, Option<&'a str>, Value, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "POST",
            "/v2/tenants".into(),
            Some(k),
            json!({"name": "Upper"}),
            422,
            "invalid_value",
        ),
        (
            "POST",
            "/v2/tenants".into(),
            Some(k),
            json!({"name": "ünïcode"}),
            422,
            "invalid_value",
        ),
        (
            "POST",
            "/v2/tenants".into(),
            Some(k),
            json!({"name": long}),
            422,
            "invalid_value",
        ),
        (
            "POST",
            "/v2/tenants".into(),
            Some(k),
            json!({"name": "x'; drop table t;--"}),
            422,
            "invalid_value",
        ),
        (
            "POST",
            "/v2/tenants".into(),
            Some(k),
            json!({"name": ""}),
            422,
            "invalid_value",
        ),
        (
            "POST",
            "/v2/tenants".into(),
            Some(k),
            json!({"name": 5}),
            422,
            "invalid_value",
        ),
        (
            "POST",
            "/v2/tenants".into(),
            Some(k),
            json!({"name": "ok", "extra": 1}),
            400,
            "unknown_field",
        ),
        (
            "POST",
            "/v2/tenants".into(),
            Some(k),
            json!({}),
            422,
            "invalid_value",
        ),
        (
            "POST",
            "/v2/tenants/t/dbs".into(),
            Some(k),
            json!({"name": "d", "size": "XXL"}),
            422,
            "invalid_value",
        ),
        (
            "POST",
            "/v2/tenants/t/dbs".into(),
            Some(k),
            json!({"name": "d"}),
            422,
            "invalid_value",
        ),
        (
            "POST",
            "/v2/tenants/t/dbs".into(),
            Some(k),
            json!({"name": "d", "size": "L1", "start_immediately": true}),
            422,
            "invalid_value",
        ),
        (
            "POST",
            "/v2/tenants/t/dbs".into(),
            Some(k),
            json!({"name": "d", "size": "L1", "start_immediately": "yes"}),
            422,
            "invalid_value",
        ),
        (
            "POST",
            format!("/v2/accounts/{}/api-keys", fx.account),
            Some(k),
            json!({"scope": "planet"}),
            422,
            "invalid_value",
        ),
        (
            "POST",
            format!("/v2/accounts/{}/api-keys", fx.account),
            Some(k),
            json!({"scope": "tenant"}),
            422,
            "invalid_value",
        ),
        (
            "POST",
            format!("/v2/accounts/{}/api-keys", fx.account),
            Some(k),
            json!({"scope": "account", "expires_at": "tomorrow"}),
            422,
            "invalid_value",
        ),
        (
            "POST",
            format!("/v2/accounts/{}/api-keys", fx.account),
            Some(k),
            json!({"scope": "account", "expires_at": "2001-01-01T00:00:00Z"}),
            422,
            "invalid_value",
        ),
        (
            "POST",
            format!("/v2/accounts/{}/api-keys", fx.account),
            Some(k),
            json!({"scope": "account", "permissions": {"can_fly": true}}),
            400,
            "unknown_field",
        ),
        (
            "POST",
            "/v2/account/contact".into(),
            Some(k),
            json!({"email": "not-an-email"}),
            422,
            "invalid_value",
        ),
        (
            "GET",
            "/v2/tenants?limit=0".into(),
            Some(k),
            Value::Null,
            422,
            "invalid_value",
        ),
        (
            "GET",
            "/v2/tenants?limit=-5".into(),
            Some(k),
            Value::Null,
            422,
            "invalid_value",
        ),
        (
            "GET",
            "/v2/tenants?limit=1001".into(),
            Some(k),
            Value::Null,
            422,
            "invalid_value",
        ),
        (
            "GET",
            "/v2/tenants?limit=99999999999999999999999".into(),
            Some(k),
            Value::Null,
            422,
            "invalid_value",
        ),
        (
            "GET",
            "/v2/tenants?cursor=bogus".into(),
            Some(k),
            Value::Null,
            400,
            "invalid_cursor",
        ),
        (
            "GET",
            "/v2/tenants?cursor=n1.zz".into(),
            Some(k),
            Value::Null,
            400,
            "invalid_cursor",
        ),
        (
            "GET",
            "/v2/tenants?colour=red".into(),
            Some(k),
            Value::Null,
            400,
            "invalid_query",
        ),
        (
            "DELETE",
            "/v2/tenants/t?cascade=maybe".into(),
            Some(k),
            Value::Null,
            400,
            "invalid_query",
        ),
        (
            "GET",
            "/v2/dbs/not-a-uuid".into(),
            Some(k),
            Value::Null,
            404,
            "not_found",
        ),
        (
            "GET",
            "/v2/tenants/NOPE".into(),
            Some(k),
            Value::Null,
            404,
            "not_found",
        ),
        (
            "GET",
            "/v2/tenants".into(),
            Some("Bearer"),
            Value::Null,
            401,
            "invalid_token",
        ),
        (
            "GET",
            "/v2/tenants".into(),
            Some(""),
            Value::Null,
            401,
            "invalid_token",
        ),
        (
            "GET",
            "/v2/tenants".into(),
            Some("spg99_"),
            Value::Null,
            401,
            "invalid_token",
        ),
        (
            "GET",
            "/v2/tenants".into(),
            Some("spg99_svc_00"),
            Value::Null,
            401,
            "invalid_token",
        ),
        (
            "GET",
            "/v2/tenants".into(),
            Some(&huge_token),
            Value::Null,
            401,
            "invalid_token",
        ),
    ];
    for (method, path, token, body, status, code) in cases {
        let body = (!body.is_null()).then_some(&body);
        let r = s.call(method, &path, token, body);
        assert_eq!(
            (r.status, r.code()),
            (status, code),
            "{method} {path} {body:?}: {r:?}"
        );
    }
    // Raw bodies: malformed, wrong type, huge, wrong content type, bad Idempotency-Key.
    let raw = |ct: &str, bytes: &[u8], extra: Option<(&str, &str)>| {
        let mut req = ureq::post(&s.url("/v2/tenants"))
            .set("Authorization", &format!("Bearer {k}"))
            .set("Content-Type", ct);
        if let Some((h, v)) = extra {
            req = req.set(h, v);
        }
        match req.send_bytes(bytes) {
            Ok(r) | Err(ureq::Error::Status(_, r)) => {
                let st = r.status();
                let v: Value = r.into_json().unwrap();
                (st, v["error"]["code"].as_str().unwrap_or("").to_owned())
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(
        raw("application/json", b"{\"name\":", None),
        (400, "malformed_json".into())
    );
    assert_eq!(
        raw("application/json", b"[\"t\"]", None),
        (400, "malformed_json".into())
    );
    assert_eq!(
        raw("application/json", &vec![b'{'; 1_000_000], None),
        (413, "body_too_large".into())
    );
    assert_eq!(
        raw("text/plain", b"{\"name\":\"x\"}", None),
        (415, "unsupported_media_type".into())
    );
    assert_eq!(
        raw(
            "application/json",
            b"{\"name\":\"x\"}",
            Some(("Idempotency-Key", ""))
        ),
        (400, "invalid_idempotency_key".into())
    );

    assert_eq!(s.fingerprint().1, before, "nothing was written");
    assert_eq!(s.call("GET", "/healthz", None, None).status, 200);
}

#[test]
fn secrets_never_reach_the_data_directory_or_the_logs() {
    let tmp = tempdir();
    let dir = tmp.path().join("data");
    let fx = Fixture::new(&dir);
    let s = &fx.server;
    let created = s.create_tenant(&fx.account_key, "shop");
    let password = created.body["pg_password"].as_str().unwrap().to_owned();
    s.create_db(&fx.account_key, "shop", "app");
    let rotated = s.post("/v2/api-keys/rotate", &fx.account_key, json!({}));
    let new_token = rotated.body["token"].as_str().unwrap().to_owned();
    let creds = s.get("/v2/tenants/shop/credentials", &new_token);
    assert_eq!(creds.body["pg_password"], password.as_str());
    // No read other than credentials shows the password; none shows a token or a hash.
    for path in [
        "/v2/tenants/shop",
        "/v2/tenants",
        "/v2/api-keys/me",
        "/v2/account/profile",
    ] {
        let body = s.get(path, &new_token).body.to_string();
        assert!(!body.contains(&password), "{path} shows the password");
        assert!(!body.contains("secret"), "{path}: {body}");
    }
    let secret_of = |t: &str| t.rsplit('_').next().unwrap().to_owned();
    let secrets = [
        password.clone(),
        secret_of(&fx.account_key),
        secret_of(&new_token),
        secret_of(ROOT_TOKEN),
    ];
    let refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
    assert_no_plaintext(&dir, &refs);
    let logs = s.stderr();
    for secret in &refs {
        assert!(
            !logs.contains(secret),
            "the server's log output holds a secret"
        );
    }
}
