//! The authorization matrix: every public route, asked by every kind of key, answers exactly
//! the documented status.
//!
//! Given account A (with tenants T1, T2 and database D1 in T1) and account B:
//! `global` is the bootstrap key; `account` an A key with every permission; `other_account` a
//! B key with every permission; `tenant` a T1 key with every permission a tenant key can use;
//! `other_tenant` a T2 key; `no_perm` an A key with no permission; and `expired`, `revoked`,
//! `rotated_old` (the token before a rotation) and `missing` (no token) must all get 401.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::{all_permissions, tempdir, Events, Fixture, Server, ROOT_TOKEN};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Who {
    Global,
    Account,
    OtherAccount,
    Tenant,
    OtherTenant,
    NoPerm,
}

const WHO: [Who; 6] = [
    Who::Global,
    Who::Account,
    Who::OtherAccount,
    Who::Tenant,
    Who::OtherTenant,
    Who::NoPerm,
];

struct World {
    fx: Fixture,
    account_b: String,
    db_id: String,
    counter: std::cell::Cell<u32>,
}

impl World {
    fn s(&self) -> &Server {
        &self.fx.server
    }

    fn unique(&self, prefix: &str) -> String {
        self.counter.set(self.counter.get() + 1);
        format!("{prefix}{}", self.counter.get())
    }

    /// A fresh key of kind `who` (fresh, so that rotating or revoking it harms no other case).
    fn key(&self, who: Who) -> String {
        let s = self.s();
        match who {
            Who::Global => s.issue_key(
                ROOT_TOKEN,
                &self.fx.account,
                json!({"scope": "global", "permissions": all_permissions()}),
            ),
            Who::Account => s.issue_key(
                ROOT_TOKEN,
                &self.fx.account,
                json!({"scope": "account", "permissions": all_permissions()}),
            ),
            Who::OtherAccount => s.issue_key(
                ROOT_TOKEN,
                &self.account_b,
                json!({"scope": "account", "permissions": all_permissions()}),
            ),
            Who::Tenant => s.issue_key(
                ROOT_TOKEN,
                &self.fx.account,
                json!({"scope": "tenant", "tenant": "t1", "permissions": all_permissions()}),
            ),
            Who::OtherTenant => s.issue_key(
                ROOT_TOKEN,
                &self.fx.account,
                json!({"scope": "tenant", "tenant": "t2", "permissions": all_permissions()}),
            ),
            Who::NoPerm => s.issue_key(ROOT_TOKEN, &self.fx.account, json!({"scope": "account"})),
        }
    }
}

/// One route: how to call it (it may set up a fresh target first) and what each key gets.
struct Case {
    route: &'static str,
    call: fn(&World, Who) -> (&'static str, String, Option<Value>),
    expect: [u16; 6],
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            route: "POST /v2/accounts",
            call: |_, _| ("POST", "/v2/accounts".into(), Some(json!({"name": "n"}))),
            expect: [201, 403, 403, 403, 403, 403],
        },
        Case {
            route: "GET /v2/accounts",
            call: |_, _| ("GET", "/v2/accounts".into(), None),
            expect: [200, 403, 403, 403, 403, 403],
        },
        Case {
            route: "GET /v2/accounts/{account}/api-keys",
            call: |w, _| {
                (
                    "GET",
                    format!("/v2/accounts/{}/api-keys", w.fx.account),
                    None,
                )
            },
            expect: [200, 200, 404, 403, 403, 200],
        },
        Case {
            route: "GET /v2/accounts/{account}",
            call: |w, _| ("GET", format!("/v2/accounts/{}", w.fx.account), None),
            expect: [200, 200, 404, 200, 200, 200],
        },
        Case {
            route: "POST /v2/accounts/{account}/api-keys",
            call: |w, _| {
                let path = format!("/v2/accounts/{}/api-keys", w.fx.account);
                ("POST", path, Some(json!({"scope": "account"})))
            },
            expect: [201, 201, 404, 403, 403, 201],
        },
        Case {
            route: "GET /v2/account/profile",
            call: |_, _| ("GET", "/v2/account/profile".into(), None),
            expect: [403, 200, 200, 200, 200, 200],
        },
        Case {
            route: "POST /v2/account/contact",
            call: |_, _| {
                let body = json!({"email": "a@b.io"});
                ("POST", "/v2/account/contact".into(), Some(body))
            },
            expect: [403, 200, 200, 403, 403, 200],
        },
        Case {
            route: "GET /v2/billing/summary",
            call: |w, _| {
                let path = format!("/v2/billing/summary?account={}", w.fx.account);
                ("GET", path, None)
            },
            expect: [200, 200, 404, 200, 200, 200],
        },
        Case {
            route: "GET /v2/api-keys/me",
            call: |_, _| ("GET", "/v2/api-keys/me".into(), None),
            expect: [200; 6],
        },
        Case {
            route: "POST /v2/api-keys/rotate",
            call: |_, _| ("POST", "/v2/api-keys/rotate".into(), None),
            expect: [200; 6],
        },
        Case {
            route: "POST /v2/api-keys/revoke",
            call: |_, _| ("POST", "/v2/api-keys/revoke".into(), None),
            expect: [200; 6],
        },
        Case {
            route: "POST /v2/tenants",
            call: |w, who| {
                let mut body = json!({"name": w.unique("nt")});
                if who == Who::Global {
                    body["account"] = json!(w.fx.account);
                }
                ("POST", "/v2/tenants".into(), Some(body))
            },
            expect: [201, 201, 201, 403, 403, 403],
        },
        Case {
            route: "GET /v2/tenants",
            call: |_, _| ("GET", "/v2/tenants".into(), None),
            expect: [200; 6],
        },
        Case {
            route: "GET /v2/tenants/{tenant}",
            call: |_, _| ("GET", "/v2/tenants/t1".into(), None),
            expect: [200, 200, 404, 200, 404, 200],
        },
        Case {
            route: "GET /v2/tenants/{tenant}/credentials",
            call: |_, _| ("GET", "/v2/tenants/t1/credentials".into(), None),
            expect: [200, 200, 404, 200, 404, 200],
        },
        Case {
            route: "POST /v2/tenants/{tenant}/credentials/reset",
            call: |_, _| ("POST", "/v2/tenants/t1/credentials/reset".into(), None),
            expect: [200, 200, 404, 200, 404, 403],
        },
        Case {
            route: "DELETE /v2/tenants/{tenant}",
            call: |w, _| {
                let name = w.unique("dt");
                w.s().create_tenant(&w.fx.account_key, &name);
                ("DELETE", format!("/v2/tenants/{name}?cascade=true"), None)
            },
            // A tenant key only ever sees its own tenant: the fresh one does not exist for it.
            expect: [202, 202, 404, 404, 404, 403],
        },
        Case {
            route: "POST /v2/tenants/{tenant}/dbs",
            call: |w, _| {
                let body = json!({"name": w.unique("db"), "size": "L1"});
                ("POST", "/v2/tenants/t1/dbs".into(), Some(body))
            },
            expect: [201, 201, 404, 201, 404, 403],
        },
        Case {
            route: "GET /v2/tenants/{tenant}/dbs",
            call: |_, _| ("GET", "/v2/tenants/t1/dbs".into(), None),
            expect: [200, 200, 404, 200, 404, 200],
        },
        Case {
            route: "GET /v2/tenants/{tenant}/dbs/{db}",
            call: |_, _| ("GET", "/v2/tenants/t1/dbs/d1".into(), None),
            expect: [200, 200, 404, 200, 404, 200],
        },
        Case {
            route: "GET /v2/dbs/{id}",
            call: |w, _| ("GET", format!("/v2/dbs/{}", w.db_id), None),
            expect: [200, 200, 404, 200, 404, 200],
        },
        Case {
            route: "DELETE /v2/tenants/{tenant}/dbs/{db}",
            call: |w, _| {
                let name = w.unique("dd");
                w.s().create_db(&w.fx.account_key, "t1", &name);
                ("DELETE", format!("/v2/tenants/t1/dbs/{name}"), None)
            },
            expect: [202, 202, 404, 202, 404, 403],
        },
        Case {
            // Allowed (can_delete), it reaches the history check: d1 never ran, so it has no
            // backup to restore from.
            route: "POST /v2/tenants/{tenant}/dbs/{db}/restore",
            call: |_, _| {
                let body = json!({"at": "2026-01-01T00:00:00Z"});
                ("POST", "/v2/tenants/t1/dbs/d1/restore".into(), Some(body))
            },
            expect: [422, 422, 404, 422, 404, 403],
        },
        Case {
            // Allowed (any key in scope), it names a database that does not exist.
            route: "GET /v2/tenants/{tenant}/dbs/{db}/schema-diff",
            call: |_, _| {
                (
                    "GET",
                    "/v2/tenants/t1/dbs/d1/schema-diff?against=nope".into(),
                    None,
                )
            },
            expect: [404, 404, 404, 404, 404, 404],
        },
        Case {
            // Allowed (can_delete), it reaches the check that d1 is a branch.
            route: "POST /v2/tenants/{tenant}/dbs/{db}/reset",
            call: |_, _| ("POST", "/v2/tenants/t1/dbs/d1/reset".into(), None),
            expect: [409, 409, 404, 409, 404, 403],
        },
        Case {
            // Allowed (can_create_db): HA on (the server keeps a repository), then the same again.
            route: "POST /v2/tenants/{tenant}/dbs/{db}/ha",
            call: |_, _| {
                let body = json!({"enabled": true});
                ("POST", "/v2/tenants/t1/dbs/d1/ha".into(), Some(body))
            },
            expect: [200, 200, 404, 200, 404, 403],
        },
        Case {
            route: "POST /v2/tenants/{tenant}/dbs/{db}/{start|stop|scale}",
            call: |_, _| ("POST", "/v2/tenants/t1/dbs/d1/start".into(), None),
            expect: [409, 409, 404, 409, 404, 409],
        },
        Case {
            route: "GET /v2/sizes",
            call: |_, _| ("GET", "/v2/sizes".into(), None),
            expect: [200; 6],
        },
        Case {
            route: "GET /v2/events",
            call: |_, _| ("GET", "/v2/events?since=0".into(), None),
            expect: [200; 6],
        },
        Case {
            route: "POST /v2/events/tickets",
            call: |_, _| ("POST", "/v2/events/tickets".into(), None),
            expect: [201; 6],
        },
        Case {
            route: "GET /v2/admin/log",
            call: |_, _| ("GET", "/v2/admin/log?from=1&limit=5".into(), None),
            expect: [200, 403, 403, 403, 403, 403],
        },
        Case {
            route: "GET /v2/admin/verify",
            call: |_, _| ("GET", "/v2/admin/verify".into(), None),
            expect: [200, 403, 403, 403, 403, 403],
        },
        Case {
            route: "GET /v2/admin/state",
            call: |_, _| ("GET", "/v2/admin/state".into(), None),
            expect: [200, 403, 403, 403, 403, 403],
        },
        Case {
            // Last: it deletes account B (other_account), then account A (account).
            route: "POST /v2/account/delete",
            call: |_, _| ("POST", "/v2/account/delete".into(), None),
            expect: [403, 202, 202, 403, 403, 403],
        },
    ]
}

/// Every route registered on the server, as the matrix names them.
const ROUTES: &[&str] = &[
    "POST /v2/accounts",
    "GET /v2/accounts",
    "GET /v2/accounts/{account}",
    "GET /v2/accounts/{account}/api-keys",
    "POST /v2/accounts/{account}/api-keys",
    "GET /v2/account/profile",
    "POST /v2/account/contact",
    "POST /v2/account/delete",
    "GET /v2/api-keys/me",
    "POST /v2/api-keys/rotate",
    "POST /v2/api-keys/revoke",
    "POST /v2/tenants",
    "GET /v2/tenants",
    "GET /v2/tenants/{tenant}",
    "DELETE /v2/tenants/{tenant}",
    "GET /v2/tenants/{tenant}/credentials",
    "POST /v2/tenants/{tenant}/credentials/reset",
    "POST /v2/tenants/{tenant}/dbs",
    "GET /v2/tenants/{tenant}/dbs",
    "GET /v2/tenants/{tenant}/dbs/{db}",
    "DELETE /v2/tenants/{tenant}/dbs/{db}",
    "POST /v2/tenants/{tenant}/dbs/{db}/restore",
    "POST /v2/tenants/{tenant}/dbs/{db}/reset",
    "GET /v2/tenants/{tenant}/dbs/{db}/schema-diff",
    "POST /v2/tenants/{tenant}/dbs/{db}/ha",
    "POST /v2/tenants/{tenant}/dbs/{db}/{start|stop|scale}",
    "GET /v2/dbs/{id}",
    "GET /v2/sizes",
    "GET /v2/billing/summary",
    "GET /v2/events",
    "POST /v2/events/tickets",
    "GET /v2/admin/log",
    "GET /v2/admin/verify",
    "GET /v2/admin/state",
];

fn send(s: &Server, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> u16 {
    if path.starts_with("/v2/events?") {
        // A stream never ends: its status is all the matrix reads.
        return match Events::open(s, path, token, None) {
            Ok(_) => 200,
            Err(r) => r.status,
        };
    }
    s.call(method, path, token, body.as_ref()).status
}

#[test]
fn every_route_answers_every_kind_of_key_as_documented() {
    let tmp = tempdir();
    let fx = Fixture::new(&tmp.path().join("data"));
    let s = &fx.server;
    let account_b = s.create_account("other");
    s.create_tenant(&fx.account_key, "t1");
    s.create_tenant(&fx.account_key, "t2");
    let db_id = s.create_db(&fx.account_key, "t1", "d1").body["db_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let w = World {
        fx,
        account_b,
        db_id,
        counter: Default::default(),
    };

    // The keys that must be refused everywhere.
    let s = w.s();
    let expired = s.issue_key(
        ROOT_TOKEN,
        &w.fx.account,
        json!({"scope": "account", "permissions": all_permissions(),
               "expires_at": (chrono::Utc::now() + chrono::Duration::milliseconds(1500)).to_rfc3339()}),
    );
    let revoked = w.key(Who::Account);
    assert_eq!(
        send(s, "POST", "/v2/api-keys/revoke", Some(&revoked), None),
        200
    );
    let rotated_old = w.key(Who::Account);
    assert_eq!(
        send(s, "POST", "/v2/api-keys/rotate", Some(&rotated_old), None),
        200
    );
    std::thread::sleep(Duration::from_millis(1600));
    let refused: [(&str, Option<&str>, &str); 4] = [
        ("expired", Some(&expired), "token_expired"),
        ("revoked", Some(&revoked), "token_revoked"),
        ("rotated_old", Some(&rotated_old), "invalid_token"),
        ("missing", None, "missing_token"),
    ];

    let cases = cases();
    let covered: Vec<&str> = cases.iter().map(|c| c.route).collect();
    for route in ROUTES {
        assert!(covered.contains(route), "{route} is not in the matrix");
    }
    assert_eq!(covered.len(), ROUTES.len());

    // Account A's own key goes last: the last case deletes the account it belongs to.
    let order = [0, 3, 4, 5, 2, 1];
    let mut failures = Vec::new();
    for case in &cases {
        for (name, token, code) in refused {
            let (method, path, body) = (case.call)(&w, Who::Global);
            let r = match path.starts_with("/v2/events?") {
                true => Events::open(s, &path, token, None).err().expect("refused"),
                false => s.call(method, &path, token, body.as_ref()),
            };
            if (r.status, r.code()) != (401, code) {
                failures.push(format!(
                    "{} as {name}: expected 401 {code}, got {} {}",
                    case.route,
                    r.status,
                    r.code()
                ));
            }
        }
        let tokens: Vec<String> = WHO.iter().map(|who| w.key(*who)).collect();
        for i in order {
            let (who, token) = (WHO[i], &tokens[i]);
            let (method, path, body) = (case.call)(&w, who);
            let got = send(s, method, &path, Some(token), body);
            if got != case.expect[i] {
                failures.push(format!(
                    "{} as {who:?}: expected {}, got {got}",
                    case.route, case.expect[i]
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_openapi_document_lists_exactly_the_routes_and_the_describe_fields() {
    let tmp = tempdir();
    let s = crate::helpers::Start::new(&tmp.path().join("data")).spawn();
    let doc = s.call("GET", "/v2/openapi.json", None, None);
    assert_eq!(doc.status, 200);
    assert!(doc.body["openapi"].as_str().unwrap().starts_with("3."));
    let mut documented: Vec<String> = Vec::new();
    for (path, ops) in doc.body["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            documented.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    documented.sort();
    let mut routes: Vec<String> = ROUTES
        .iter()
        .map(|r| r.replace("{start|stop|scale}", "{action}"))
        .collect();
    routes.sort();
    assert_eq!(documented, routes);

    let describe = &doc.body["components"]["schemas"]["DbView"]["properties"];
    let mut fields: Vec<&str> = describe
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort();
    let mut expected = crate::api_scenario::DESCRIBE_FIELDS.to_vec();
    expected.sort();
    assert_eq!(fields, expected);
}
