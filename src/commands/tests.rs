//! Decisions tested as stories: given the commands accepted so far, when this command, then
//! these events (or this refusal). No log, no server, no clock: each runs in microseconds, so
//! a rule is tested where it is written; the spawned-server tests show the same rules
//! through the API.

use std::time::Duration;

use spg99_events::{Actor, Envelope, Event, Permissions, Sealed, Timestamp};
use spg99_projections::{DbState, State};
use uuid::Uuid;

use super::{decide, Command, ScopeRequest};
use crate::catalog::Size;
use crate::decision::{CommandMeta, Rejection};
use crate::domain::{AccountName, Email, ResourceName};
use crate::lifecycle::{
    Answer, BackupReport, Context, Lifecycle, Load, Outcome, Runtime, Settings, Step, StoredReport,
    WorkerReport,
};

/// The state the next command is decided against, and the lifecycle's soft state and time.
struct World {
    state: State,
    runtime: Runtime,
    settings: Settings,
    now: Timestamp,
}

/// What a decision gave: its events and answer, or its refusal.
type Then = Result<(Vec<Event>, Answer), Rejection>;

const ROOT: &str = "root";
const OWNER: &str = "owner";

fn key(id: &str) -> Actor {
    Actor::ApiKey(id.to_owned())
}

fn name(raw: &str) -> ResourceName {
    ResourceName::parse("name", raw).unwrap()
}

fn id(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

const ACCOUNT: u128 = 1;
const TENANT: u128 = 2;
const DB: u128 = 3;

impl World {
    /// An empty platform at a fixed time.
    fn new() -> World {
        World {
            state: State::default(),
            runtime: Runtime::default(),
            settings: Settings::default(),
            now: Timestamp::from_micros(1_800_000_000_000_000),
        }
    }

    /// Given: `command` by `actor` was accepted; its events are folded in.
    fn given(mut self, actor: Actor, command: Command) -> World {
        let then = self.when(actor, command.clone());
        let (events, _) = then.unwrap_or_else(|r| panic!("given {command:?} was refused: {r}"));
        assert!(
            !events.is_empty() || matches!(command, Command::Lifecycle(_)),
            "given {command:?} changed nothing"
        );
        self
    }

    /// When: `command` by `actor` is decided; what it gave (its events are folded in, as the
    /// committer does, so that the next command sees them).
    fn when(&mut self, actor: Actor, command: Command) -> Then {
        let meta = CommandMeta {
            actor,
            request_id: "test".into(),
        };
        let mut cx = Context {
            runtime: &mut self.runtime,
            settings: &self.settings,
            now: self.now,
        };
        let (drafts, answer) = decide(&self.state, &mut cx, &meta, &command)?;
        let mut events = Vec::new();
        for d in drafts {
            let env = Envelope {
                seq: self.state.last_seq + 1,
                at: self.now,
                actor: meta.actor.clone(),
                request_id: meta.request_id.clone(),
                account: d.subject.account,
                tenant: d.subject.tenant,
                tenant_id: d.subject.tenant_id,
                db_id: d.subject.db_id,
                event: d.event,
            };
            self.state.apply(&env);
            events.push(env.event);
        }
        Ok((events, answer))
    }

    fn advance(&mut self, d: Duration) {
        self.now = Timestamp::from_micros(self.now.as_micros() + d.as_micros() as i64);
    }

    /// A platform with its bootstrap key, an account and an account key with every
    /// permission.
    fn platform() -> World {
        World::new()
            .given(
                Actor::System,
                Command::Bootstrap {
                    key_id: ROOT.into(),
                    secret_hash: [1; 32],
                },
            )
            .given(
                key(ROOT),
                Command::CreateAccount {
                    account_id: id(ACCOUNT),
                    name: AccountName::parse("name", "Acme").unwrap(),
                    email: None,
                },
            )
            .given(
                key(ROOT),
                issue(OWNER, ScopeRequest::Account, Permissions::ALL),
            )
    }

    /// The platform with tenant `shop` and its stopped database `app`.
    fn with_db() -> World {
        World::platform()
            .given(key(OWNER), create_tenant(TENANT, "shop"))
            .given(key(OWNER), create_db(DB, "app"))
    }

    /// With a live worker `w1` running every profile.
    fn with_worker(self) -> World {
        self.given(Actor::Service, register("w1"))
    }

    /// With `app` running on `w1` at term 1, with one lease: (the lease).
    fn running() -> (World, Uuid) {
        let mut w = World::with_db().with_worker();
        let lease = id(100);
        w.when(Actor::Service, checkout(lease)).unwrap();
        let w = w.given(Actor::Service, report("w1", 1, Outcome::Started));
        let mut w = w;
        let (_, answer) = w.when(Actor::Service, checkout(lease)).unwrap();
        assert!(matches!(answer, Answer::Lease { .. }), "{answer:?}");
        (w, lease)
    }

    /// With a repository, `app` started on `w1` (keeping its data) and its first backup
    /// taken.
    fn backed_up() -> World {
        let mut w = World::with_db().with_worker();
        w.settings.storage = Some(spg99_wire::storage::Storage {
            repository: "/repo".into(),
            archive_timeout_secs: 5,
            history_window_secs: 7 * 86_400,
        });
        w.when(Actor::Service, checkout(id(100))).unwrap();
        let started = WorkerReport {
            keeps_data: true,
            ..report_of("w1", 1, Outcome::Started)
        };
        let w = w.given(Actor::Service, lifecycle_report(started));
        assert_eq!(w.db().stored().backup_wanted, Some(1));
        let at = w.now;
        let backed_up = WorkerReport {
            backup: Some(BackupReport {
                label: "full".into(),
                started_at: at,
                stopped_at: at,
                oldest_at: at,
                repository_bytes: 1 << 20,
            }),
            ..report_of("w1", 1, Outcome::BackedUp)
        };
        let w = w.given(Actor::Service, lifecycle_report(backed_up));
        assert!(w.db().restorable());
        w
    }

    fn db(&self) -> &spg99_projections::Db {
        self.state.dbs.get(&id(DB)).expect("the database")
    }
}

fn issue(key_id: &str, scope: ScopeRequest, permissions: Permissions) -> Command {
    Command::IssueKey {
        account: id(ACCOUNT),
        key_id: key_id.into(),
        secret_hash: [2; 32],
        scope,
        permissions,
        expires_at: None,
        name: None,
    }
}

fn create_tenant(tenant: u128, tenant_name: &str) -> Command {
    Command::CreateTenant {
        tenant_id: id(tenant),
        account: None,
        name: name(tenant_name),
        pg_user: format!("u_{tenant}"),
        pg_password: Sealed(vec![1]),
        verifier: Sealed(vec![2]),
    }
}

fn create_db(db: u128, db_name: &str) -> Command {
    Command::CreateDb {
        db_id: id(db),
        tenant: name("shop"),
        name: name(db_name),
        size: Size::parse("size", "L1").unwrap(),
        timeline: format!("tl{db}"),
        parent: None,
        at: None,
        ha: false,
    }
}

/// The registration of worker `id` (`w1`, `w2`...) with room for 8 writers of every profile.
fn register(id: &str) -> Command {
    Command::Lifecycle(Lifecycle::RegisterWorker {
        id: id.into(),
        address: format!("{id}:6432"),
        capacity: 8,
        profiles: ["c0.25", "c0.5", "c1", "c2"].map(String::from).to_vec(),
        instance: format!("i{}", &id[1..]),
    })
}

fn checkout(lease: Uuid) -> Command {
    Command::Lifecycle(Lifecycle::Checkout {
        pg_user: format!("u_{TENANT}"),
        db: "app".into(),
        lease_id: lease,
    })
}

fn report(worker: &str, term: u64, outcome: Outcome) -> Command {
    lifecycle_report(report_of(worker, term, outcome))
}

fn report_of(worker: &str, term: u64, outcome: Outcome) -> WorkerReport {
    WorkerReport {
        worker_id: worker.into(),
        db_id: id(DB),
        writer_term: term,
        outcome,
        backend_addr: Some(format!("{worker}:5432")),
        reason: None,
        keeps_data: false,
        credentials: None,
        stored: None,
        backup: None,
        standby_term: None,
    }
}

fn heartbeat(worker: &str) -> Command {
    Command::Lifecycle(Lifecycle::Heartbeat {
        worker_id: worker.into(),
        loads: vec![],
    })
}

fn lifecycle_report(r: WorkerReport) -> Command {
    Command::Lifecycle(Lifecycle::Report(Box::new(r)))
}

fn reconcile(step: Step) -> Command {
    Command::Lifecycle(Lifecycle::Reconcile(step))
}

fn types(then: &Then) -> Vec<&'static str> {
    match then {
        Ok((events, _)) => events.iter().map(Event::type_name).collect(),
        Err(r) => panic!("refused: {r}"),
    }
}

/// The stable code a refusal answers with.
fn code(then: Then) -> &'static str {
    match then {
        Ok((events, _)) => panic!("accepted: {events:?}"),
        Err(Rejection::Forbidden { code, .. })
        | Err(Rejection::Conflict { code, .. })
        | Err(Rejection::Gone { code, .. })
        | Err(Rejection::Busy { code, .. })
        | Err(Rejection::Unprocessable { code, .. }) => code,
        Err(Rejection::NotFound { .. }) => "not_found",
        Err(Rejection::MissingPermission { .. }) => "missing_permission",
        Err(Rejection::Invalid { .. }) => "invalid_value",
        Err(Rejection::CallerGone) => "token_revoked",
    }
}

// ---- accounts ----

#[test]
fn the_platform_is_bootstrapped_once() {
    let mut w = World::platform();
    let again = w.when(
        Actor::System,
        Command::Bootstrap {
            key_id: "second".into(),
            secret_hash: [9; 32],
        },
    );
    assert_eq!(code(again), "already_bootstrapped");
}

#[test]
fn only_a_global_key_creates_accounts_and_an_account_id_is_taken_once() {
    let mut w = World::platform();
    let create = |n| Command::CreateAccount {
        account_id: id(n),
        name: AccountName::parse("name", "Other").unwrap(),
        email: Some(Email::parse("email", "ops@other.io").unwrap()),
    };
    assert_eq!(code(w.when(key(OWNER), create(7))), "global_key_required");
    assert_eq!(types(&w.when(key(ROOT), create(7))), ["account.created"]);
    assert_eq!(code(w.when(key(ROOT), create(7))), "account_exists");
}

#[test]
fn an_account_being_deleted_takes_no_new_tenant() {
    let mut w = World::platform();
    assert_eq!(
        types(&w.when(key(OWNER), Command::DeleteAccount)),
        ["account.delete_requested"]
    );
    // Its keys go with it; a global key naming it is refused.
    assert_eq!(
        code(w.when(key(OWNER), create_tenant(TENANT, "shop"))),
        "token_revoked"
    );
    let mut by_root = create_tenant(TENANT, "shop");
    if let Command::CreateTenant { account, .. } = &mut by_root {
        *account = Some(id(ACCOUNT));
    }
    assert_eq!(code(w.when(key(ROOT), by_root)), "account_deleting");
}

// ---- keys ----

#[test]
fn a_key_issues_only_narrower_keys_with_permissions_it_holds() {
    let mut w = World::platform().given(
        key(OWNER),
        issue(
            "limited",
            ScopeRequest::Account,
            Permissions {
                can_create_db: true,
                ..Permissions::default()
            },
        ),
    );
    assert_eq!(
        code(w.when(
            key("limited"),
            issue("wider", ScopeRequest::Global, Permissions::default())
        )),
        "scope_escalation"
    );
    assert_eq!(
        code(w.when(
            key("limited"),
            issue("more", ScopeRequest::Account, Permissions::ALL)
        )),
        "permission_escalation"
    );
    let same = Permissions {
        can_create_db: true,
        ..Permissions::default()
    };
    assert_eq!(
        types(&w.when(key("limited"), issue("same", ScopeRequest::Account, same))),
        ["api_key.issued"]
    );
}

#[test]
fn a_revoked_key_decides_nothing_more() {
    let mut w = World::platform();
    assert_eq!(
        types(&w.when(key(OWNER), Command::RevokeKey { key_id: None })),
        ["api_key.revoked"]
    );
    assert_eq!(
        code(w.when(key(OWNER), create_tenant(TENANT, "shop"))),
        "token_revoked"
    );
    // Revoking it again (by the root key) changes nothing.
    let again = w.when(
        key(ROOT),
        Command::RevokeKey {
            key_id: Some(OWNER.into()),
        },
    );
    assert_eq!(types(&again), Vec::<&str>::new());
}

// ---- tenants ----

#[test]
fn tenant_names_are_unique_and_a_tenant_with_databases_is_deleted_only_by_cascade() {
    let mut w = World::with_db();
    assert_eq!(
        code(w.when(key(OWNER), create_tenant(9, "shop"))),
        "tenant_exists"
    );
    let delete = |cascade| Command::DeleteTenant {
        tenant: name("shop"),
        cascade,
    };
    assert_eq!(
        code(w.when(key(OWNER), delete(false))),
        "tenant_has_databases"
    );
    assert_eq!(
        types(&w.when(key(OWNER), delete(true))),
        ["tenant.delete_requested"]
    );
    assert_eq!(
        code(w.when(key(OWNER), create_db(4, "more"))),
        "tenant_deleting"
    );
}

#[test]
fn a_tenant_key_sees_its_tenant_only_and_creates_no_tenant() {
    let mut w = World::with_db()
        .given(key(OWNER), create_tenant(5, "other"))
        .given(
            key(OWNER),
            issue(
                "shop-key",
                ScopeRequest::Tenant(name("shop")),
                Permissions::ALL,
            ),
        );
    assert_eq!(
        code(w.when(key("shop-key"), create_tenant(6, "third"))),
        "tenant_key_cannot_create_tenants"
    );
    let elsewhere = Command::CreateDb {
        db_id: id(7),
        tenant: name("other"),
        name: name("x"),
        size: Size::parse("size", "L1").unwrap(),
        timeline: "tl7".into(),
        parent: None,
        at: None,
        ha: false,
    };
    assert_eq!(code(w.when(key("shop-key"), elsewhere)), "not_found");
    assert_eq!(
        types(&w.when(key("shop-key"), create_db(8, "mine"))),
        ["db.created"]
    );
}

#[test]
fn only_the_system_gives_a_tenant_its_first_verifier() {
    let mut w = World::with_db();
    let set = Command::SetTenantVerifier {
        tenant_id: id(TENANT),
        verifier: Sealed(vec![3]),
    };
    assert_eq!(code(w.when(key(ROOT), set.clone())), "system_only");
    // The tenant has one already: nothing to do.
    assert_eq!(types(&w.when(Actor::System, set)), Vec::<&str>::new());
}

// ---- databases ----

#[test]
fn database_names_are_unique_in_a_tenant_and_a_key_needs_the_permission() {
    let mut w = World::with_db().given(
        key(OWNER),
        issue("reader", ScopeRequest::Account, Permissions::default()),
    );
    assert_eq!(code(w.when(key(OWNER), create_db(4, "app"))), "db_exists");
    assert_eq!(
        code(w.when(key("reader"), create_db(4, "app2"))),
        "missing_permission"
    );
    let delete = || Command::DeleteDb {
        tenant: name("shop"),
        db: name("app"),
    };
    assert_eq!(
        types(&w.when(key(OWNER), delete())),
        ["db.delete_requested"]
    );
    assert_eq!(types(&w.when(key(OWNER), delete())), Vec::<&str>::new());
}

// ---- lifecycle: workers and leases ----

#[test]
fn a_checkout_with_no_worker_says_so_and_one_with_a_worker_starts_the_database() {
    let mut w = World::with_db();
    assert_eq!(code(w.when(Actor::Service, checkout(id(100)))), "no_worker");
    let mut w = w.with_worker();
    let then = w.when(Actor::Service, checkout(id(100)));
    assert_eq!(types(&then), ["db.start_requested"]);
    assert!(matches!(
        then.unwrap().1,
        Answer::Pending {
            state: DbState::Starting,
            ..
        }
    ));
    // A second checkout while it starts changes nothing.
    assert_eq!(
        types(&w.when(Actor::Service, checkout(id(101)))),
        Vec::<&str>::new()
    );
}

#[test]
fn a_started_report_runs_the_database_and_a_stale_term_changes_nothing() {
    let mut w = World::with_db().with_worker();
    w.when(Actor::Service, checkout(id(100))).unwrap();
    assert_eq!(
        types(&w.when(Actor::Service, report("w1", 2, Outcome::Started))),
        Vec::<&str>::new(),
        "another term's report"
    );
    assert_eq!(
        types(&w.when(Actor::Service, report("w1", 1, Outcome::Started))),
        ["db.started"]
    );
    assert_eq!(w.db().state, DbState::Running);
    let unknown = w.when(Actor::Service, report("w9", 1, Outcome::Started));
    assert_eq!(code(unknown), "worker_unknown");
}

#[test]
fn a_lease_granted_under_an_old_epoch_is_not_renewed() {
    let (mut w, lease) = World::running();
    let renew = |epoch| {
        Command::Lifecycle(Lifecycle::Renew {
            lease_id: lease,
            lease_control_epoch: epoch,
            active_connections: 3,
        })
    };
    let epoch = w.db().lease_control_epoch;
    assert!(matches!(
        w.when(Actor::Service, renew(epoch)).unwrap().1,
        Answer::Renewed { .. }
    ));
    assert_eq!(
        code(w.when(Actor::Service, renew(epoch + 1))),
        "stale_epoch"
    );
}

#[test]
fn a_lease_not_renewed_expires_and_the_idle_database_stops() {
    let (mut w, _lease) = World::running();
    w.advance(w.settings.lease_ttl + Duration::from_secs(1));
    assert_eq!(
        types(&w.when(Actor::System, reconcile(Step::ExpireLeases))),
        ["lease.expired"]
    );
    assert_eq!(
        types(&w.when(Actor::System, reconcile(Step::IdleStops))),
        Vec::<&str>::new(),
        "not idle for long enough yet"
    );
    w.advance(w.settings.idle_timeout);
    assert_eq!(
        types(&w.when(Actor::System, reconcile(Step::IdleStops))),
        ["db.stop_requested"]
    );
    assert_eq!(
        types(&w.when(Actor::Service, report("w1", 1, Outcome::Stopped))),
        ["db.stopped"]
    );
}

#[test]
fn a_silent_worker_is_lost_with_what_it_ran() {
    let (mut w, _) = World::running();
    w.advance(w.settings.worker_timeout + Duration::from_secs(1));
    assert_eq!(
        types(&w.when(Actor::System, reconcile(Step::LoseWorkers))),
        ["db.stopped", "worker.lost"]
    );
    assert_eq!(w.db().state, DbState::Stopped);
}

#[test]
fn only_the_reconciler_runs_its_steps() {
    let mut w = World::with_db();
    assert_eq!(
        code(w.when(Actor::Service, reconcile(Step::Deadlines))),
        "system_only"
    );
}

#[test]
fn a_start_past_its_deadline_fails_and_three_in_a_row_fail_the_database() {
    let mut w = World::with_db().with_worker();
    for attempt in 1..=3 {
        w.when(Actor::Service, checkout(id(100 + attempt))).unwrap();
        w.advance(w.settings.phase_deadline + Duration::from_secs(1));
        // The worker heartbeats on: only the start is late.
        w.when(Actor::Service, heartbeat("w1")).unwrap();
        assert_eq!(
            types(&w.when(Actor::System, reconcile(Step::Deadlines))),
            ["db.start_failed"]
        );
    }
    assert_eq!(w.db().state, DbState::Failed);
    assert_eq!(code(w.when(Actor::Service, checkout(id(200)))), "db_failed");
}

fn restore_to(at: Option<Timestamp>) -> Command {
    Command::RestoreDb {
        tenant: name("shop"),
        db: name("app"),
        time: at,
        lsn: None,
        timeline: "t2".into(),
        kept_db_id: id(KEPT),
    }
}

const KEPT: u128 = 9;

#[test]
fn a_restore_outlives_a_lost_worker_and_its_kept_state_is_not_deleted_under_it() {
    let mut w = World::backed_up();
    let at = w.now;
    w.advance(Duration::from_secs(10));
    w.when(Actor::Service, heartbeat("w1")).unwrap();
    let mut w = w.given(key(OWNER), restore_to(Some(at)));
    assert_eq!(w.db().state, DbState::Restoring);
    let kept = w.state.dbs.get(&id(KEPT)).unwrap().name.to_string();
    assert_eq!(kept, "app_before_restore_1");
    let delete_kept = Command::DeleteDb {
        tenant: name("shop"),
        db: name(&kept),
    };
    assert_eq!(
        code(w.when(key(OWNER), delete_kept.clone())),
        "restore_in_progress"
    );

    // The old writer stops; the restore's writer is placed on w1, which is then lost.
    let mut w = w.given(Actor::Service, report("w1", 1, Outcome::Stopped));
    w.when(Actor::System, reconcile(Step::Restores)).unwrap();
    assert_eq!(w.db().live.writer.as_ref().unwrap().worker_id, "w1");
    w.advance(w.settings.worker_timeout + Duration::from_secs(1));
    w.when(Actor::System, reconcile(Step::LoseWorkers)).unwrap();
    assert_eq!(w.db().state, DbState::Restoring, "the restore goes on");
    assert!(w.db().live.restore.is_some());

    // Once restored, the kept state can go.
    let mut w = w.given(
        Actor::Service,
        Command::Lifecycle(Lifecycle::RegisterWorker {
            id: "w1".into(),
            address: "w1:6432".into(),
            capacity: 8,
            profiles: ["c0.25", "c0.5", "c1", "c2"].map(String::from).to_vec(),
            instance: "i1b".into(),
        }),
    );
    w.when(Actor::System, reconcile(Step::Restores)).unwrap();
    let term = w.db().live.writer.as_ref().unwrap().term;
    let w = w.given(Actor::Service, report("w1", term, Outcome::Started));
    assert_eq!(w.db().state, DbState::Running);
    w.given(key(OWNER), delete_kept);
}

#[test]
fn a_restore_to_a_point_after_a_stopped_database_stopped_restores_its_newest_point() {
    let mut w = World::backed_up();
    let w1 = w.db().writer_term;
    w.advance(w.settings.idle_timeout + Duration::from_secs(1));
    w.when(Actor::Service, heartbeat("w1")).unwrap();
    w.when(Actor::System, reconcile(Step::IdleStops)).unwrap();
    let stopped_at = w.now;
    let mut w = w.given(
        Actor::Service,
        lifecycle_report(WorkerReport {
            stored: Some(StoredReport {
                complete: true,
                recoverable_until: Some(stopped_at),
                reason: None,
            }),
            ..report_of("w1", w1, Outcome::Stopped)
        }),
    );
    assert_eq!(w.db().state, DbState::Stopped);
    w.advance(Duration::from_secs(60));
    let later = w.now;
    let w = w.given(key(OWNER), restore_to(Some(later)));
    let r = w.db().live.restore.as_ref().unwrap();
    assert_eq!((r.time, r.lsn.as_deref()), (None, None), "its newest point");
}

#[test]
fn a_database_due_for_its_daily_backup_gets_it_before_its_idle_stop() {
    let mut w = World::backed_up();
    w.advance(Duration::from_secs(86_400) + w.settings.idle_timeout);
    w.when(Actor::Service, heartbeat("w1")).unwrap();
    let mut happened = Vec::new();
    for step in Step::ALL {
        happened.extend(types(&w.when(Actor::System, reconcile(step))));
    }
    assert_eq!(happened, ["db.backup_requested"]);
    assert_eq!(w.db().state, DbState::Running);
}

#[test]
fn a_second_backup_of_a_writer_is_other_work_and_one_its_writer_never_took_is_asked_again() {
    let mut w = World::backed_up();
    w.advance(Duration::from_secs(86_400));
    w.when(Actor::Service, heartbeat("w1")).unwrap();
    w.when(Actor::System, reconcile(Step::Backups)).unwrap();
    let listed = crate::lifecycle::instructions(&w.state, "w1");
    let backup = listed
        .iter()
        .find(|i| i.op == crate::lifecycle::Op::Backup)
        .expect("the daily backup is listed");
    assert_eq!(
        (backup.writer_term, backup.request),
        (1, Some(2)),
        "the same writer's second backup"
    );

    // Its worker is lost before it reports: the writer that serves next is asked instead.
    w.advance(w.settings.worker_timeout + Duration::from_secs(1));
    let mut w = w.given(Actor::Service, register("w2"));
    w.when(Actor::System, reconcile(Step::LoseWorkers)).unwrap();
    assert_eq!(w.db().stored().backup_wanted, None);
    w.when(Actor::Service, checkout(id(101))).unwrap();
    let mut w = w.given(
        Actor::Service,
        lifecycle_report(WorkerReport {
            keeps_data: true,
            ..report_of("w2", 2, Outcome::Started)
        }),
    );
    w.when(Actor::Service, heartbeat("w2")).unwrap();
    assert_eq!(
        types(&w.when(Actor::System, reconcile(Step::Backups))),
        ["db.backup_requested"]
    );
    assert_eq!(w.db().stored().backup_wanted, Some(2));
}

#[test]
fn a_start_that_restores_from_the_repository_gets_the_restore_deadline() {
    let mut w = World::backed_up();

    // w1 is lost; the next start is on w2, from the repository.
    w.advance(w.settings.worker_timeout + Duration::from_secs(1));
    let mut w = w.given(Actor::Service, register("w2"));
    w.when(Actor::System, reconcile(Step::LoseWorkers)).unwrap();
    assert_eq!(w.db().state, DbState::Stopped);
    w.when(Actor::Service, checkout(id(101))).unwrap();
    assert_eq!(w.db().live.writer.as_ref().unwrap().worker_id, "w2");
    let limit = |w: &World| w.db().live.phase_deadline_at.unwrap().as_micros() - w.now.as_micros();
    assert_eq!(limit(&w), w.settings.restore_deadline.as_micros() as i64);

    // Past the phase deadline, within the restore deadline: still starting.
    w.advance(w.settings.phase_deadline + Duration::from_secs(1));
    w.when(Actor::Service, heartbeat("w2")).unwrap();
    assert!(types(&w.when(Actor::System, reconcile(Step::Deadlines))).is_empty());
    assert_eq!(w.db().state, DbState::Starting);

    // Started there, stopped, resumed there: the phase deadline again.
    let mut w = w.given(
        Actor::Service,
        lifecycle_report(WorkerReport {
            keeps_data: true,
            ..report_of("w2", 2, Outcome::Started)
        }),
    );
    assert_eq!(w.db().data_on.as_deref(), Some("w2"));
    let term = w.db().writer_term;
    w.advance(w.settings.idle_timeout + Duration::from_secs(1));
    w.when(Actor::System, reconcile(Step::IdleStops)).unwrap();
    let mut w = w.given(Actor::Service, report("w2", term, Outcome::Stopped));
    assert_eq!(w.db().state, DbState::Stopped);
    w.when(Actor::Service, heartbeat("w2")).unwrap();
    w.when(Actor::Service, checkout(id(102))).unwrap();
    assert_eq!(limit(&w), w.settings.phase_deadline.as_micros() as i64);
}

// ---- lifecycle: the autoscaler ----

#[test]
fn a_sustained_high_load_moves_the_writer_a_profile_up() {
    let (mut w, _) = World::running();
    let busy = |cpu_milli| {
        Command::Lifecycle(Lifecycle::Heartbeat {
            worker_id: "w1".into(),
            loads: vec![Load {
                db_id: id(DB),
                cpu_milli,
                active_connections: 1,
                archive: None,
                replicas: Vec::new(),
            }],
        })
    };
    assert_eq!(
        types(&w.when(Actor::Service, busy(900))),
        ["db.load_changed"]
    );
    assert_eq!(
        types(&w.when(Actor::System, reconcile(Step::Autoscale))),
        Vec::<&str>::new(),
        "not sustained yet"
    );
    w.advance(w.settings.autoscaler.up_sustain);
    w.when(Actor::Service, busy(900)).unwrap();
    let then = w.when(Actor::System, reconcile(Step::Autoscale)).unwrap();
    match &then.0[..] {
        [Event::DbScaleStarted {
            target_profile,
            candidate_writer_term,
            ..
        }] => assert_eq!(
            (target_profile.as_str(), *candidate_writer_term),
            ("c0.5", 2)
        ),
        other => panic!("{other:?}"),
    }
}

// ---- lifecycle: instructions ----

#[test]
fn a_worker_is_told_to_start_what_was_placed_on_it_until_it_reports() {
    let mut w = World::with_db().with_worker();
    w.when(Actor::Service, checkout(id(100))).unwrap();
    let listed = crate::lifecycle::instructions(&w.state, "w1");
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (
            listed[0].op,
            listed[0].writer_term,
            listed[0].profile.as_deref()
        ),
        (crate::lifecycle::Op::Start, 1, Some("c0.25"))
    );
    w.when(Actor::Service, report("w1", 1, Outcome::Started))
        .unwrap();
    assert!(crate::lifecycle::instructions(&w.state, "w1").is_empty());
}

/// The instructions of `worker` for the database with `op`.
fn listed(w: &World, worker: &str, op: crate::lifecycle::Op) -> Vec<spg99_wire::Instruction> {
    crate::lifecycle::instructions(&w.state, worker)
        .into_iter()
        .filter(|i| i.op == op)
        .collect()
}

fn replicated(worker: &str, term: u64, standby: Option<u64>) -> Command {
    lifecycle_report(WorkerReport {
        standby_term: standby,
        ..report_of(worker, term, Outcome::Replicated)
    })
}

#[test]
fn an_ha_database_is_protected_step_by_step_and_a_failed_promotion_starts_it_as_usual_after() {
    let mut w = World::backed_up().given(Actor::Service, register("w2"));
    let set_ha = Command::SetHa {
        tenant: name("shop"),
        db: name("app"),
        enabled: true,
    };
    assert_eq!(types(&w.when(key(OWNER), set_ha.clone())), ["db.ha_set"]);
    assert_eq!(types(&w.when(key(OWNER), set_ha)), Vec::<&str>::new());
    // The writer is set up to replicate first (no standby to wait for yet).
    let r = listed(&w, "w1", crate::lifecycle::Op::Replicate);
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].ha.as_ref().unwrap().sync_standby_term, None);
    assert!(types(&w.when(Actor::System, reconcile(Step::Standbys))).is_empty());
    w.when(Actor::Service, replicated("w1", 1, None)).unwrap();
    // A standby on the other worker, at the next term, streaming from the writer.
    assert_eq!(
        types(&w.when(Actor::System, reconcile(Step::Standbys))),
        ["db.standby_requested"]
    );
    let p = listed(&w, "w2", crate::lifecycle::Op::Prepare);
    assert_eq!((p.len(), p[0].writer_term), (1, 2), "{p:?}");
    assert_eq!(
        p[0].ha.as_ref().unwrap().upstream.as_deref(),
        Some("w1:5432")
    );
    assert_eq!(
        types(&w.when(Actor::Service, report("w2", 2, Outcome::Prepared))),
        ["db.standby_started"]
    );
    // Never synchronous before the writer sees it stream.
    assert!(listed(&w, "w1", crate::lifecycle::Op::Replicate).is_empty());
    let streaming = Command::Lifecycle(Lifecycle::Heartbeat {
        worker_id: "w1".into(),
        loads: vec![Load {
            db_id: id(DB),
            cpu_milli: 0,
            active_connections: 0,
            archive: None,
            replicas: vec![spg99_wire::Replica {
                standby_term: 2,
                state: "streaming".into(),
                sync_state: "async".into(),
                lag_bytes: 0,
                reply_age_ms: 100,
            }],
        }],
    });
    assert!(types(&w.when(Actor::Service, streaming)).contains(&"db.standby_ready"));
    let r = listed(&w, "w1", crate::lifecycle::Op::Replicate);
    assert_eq!(r[0].ha.as_ref().unwrap().sync_standby_term, Some(2));
    assert!(!w.db().ha().protected(1));
    assert_eq!(
        types(&w.when(Actor::Service, replicated("w1", 1, Some(2)))),
        ["db.replication_set"]
    );
    assert!(w.db().ha().protected(1));
    // The writer's worker silent past the HA timeout, the standby's live: a failover.
    w.advance(w.settings.ha_worker_timeout + Duration::from_millis(1));
    w.when(Actor::Service, heartbeat("w2")).unwrap();
    assert_eq!(
        types(&w.when(Actor::System, reconcile(Step::LoseWorkers))),
        ["db.failover_started", "worker.lost"]
    );
    let start = listed(&w, "w2", crate::lifecycle::Op::Start);
    assert_eq!(start[0].writer_term, 2);
    assert!(
        start[0].ha.is_some() && start[0].restore.is_none(),
        "{start:?}"
    );
    // The promotion fails: the next start is an ordinary one (from the repository).
    w.when(
        Actor::Service,
        lifecycle_report(WorkerReport {
            reason: Some("the standby did not promote".into()),
            ..report_of("w2", 2, Outcome::Failed)
        }),
    )
    .unwrap();
    assert_eq!(w.db().state, DbState::Stopped);
    assert_eq!(w.db().ha().failover_started_at, None);
    w.when(Actor::Service, checkout(id(101))).unwrap();
    let start = listed(&w, "w2", crate::lifecycle::Op::Start);
    assert!(
        start[0].ha.is_none() && start[0].restore.is_some(),
        "{start:?}"
    );
}
