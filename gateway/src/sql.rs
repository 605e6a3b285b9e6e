//! What the pooler reads of a client's SQL: the words of each statement (strings, comments
//! and dollar quotes skipped), enough to see which statements leave state in the session
//! (the client is then kept on its backend) and which drop prepared statements.

/// A word of SQL: a keyword or a name as written (PostgreSQL folds it to lower case), or a
/// quoted name.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok<'a> {
    Word(&'a str),
    Quoted(String),
    Open,
}

impl Tok<'_> {
    /// Whether it is `word` (given in lower case).
    fn is(&self, word: &str) -> bool {
        matches!(self, Tok::Word(w) if w.eq_ignore_ascii_case(word))
    }
}

/// A query's statements, each as its words: read once, asked several things.
pub struct Statements<'a>(Vec<Vec<Tok<'a>>>);

/// Reads the statements of `sql`.
pub fn read(sql: &str) -> Statements<'_> {
    Statements(statements(sql))
}

fn statements(sql: &str) -> Vec<Vec<Tok<'_>>> {
    let b = sql.as_bytes();
    let mut out = vec![Vec::new()];
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b';' => {
                out.push(Vec::new());
                i += 1;
            }
            b'(' => {
                out.last_mut().unwrap().push(Tok::Open);
                i += 1;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 0;
                while i < b.len() {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            b'\'' => {
                // E'...' strings take backslash escapes; '' is a quote in any string.
                let escapes = i > 0 && matches!(b[i - 1], b'e' | b'E');
                i += 1;
                while i < b.len() {
                    if escapes && b[i] == b'\\' {
                        i += 2;
                    } else if b[i] == b'\'' {
                        if b.get(i + 1) == Some(&b'\'') {
                            i += 2;
                        } else {
                            i += 1;
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            b'"' => {
                let mut name = Vec::new();
                i += 1;
                while i < b.len() {
                    if b[i] == b'"' {
                        if b.get(i + 1) == Some(&b'"') {
                            name.push(b'"');
                            i += 2;
                        } else {
                            i += 1;
                            break;
                        }
                    } else {
                        name.push(b[i]);
                        i += 1;
                    }
                }
                out.last_mut()
                    .unwrap()
                    .push(Tok::Quoted(String::from_utf8_lossy(&name).into_owned()));
            }
            b'$' => {
                // $tag$ ... $tag$ (or a parameter, $1).
                let end = b[i + 1..]
                    .iter()
                    .position(|c| !(c.is_ascii_alphanumeric() || *c == b'_'))
                    .map(|p| i + 1 + p);
                match end {
                    Some(e)
                        if b[e] == b'$' && !b[i + 1..e].first().is_some_and(u8::is_ascii_digit) =>
                    {
                        let tag = &b[i..=e];
                        let body = e + 1;
                        i = b[body..]
                            .windows(tag.len())
                            .position(|w| w == tag)
                            .map(|p| body + p + tag.len())
                            .unwrap_or(b.len());
                    }
                    _ => i += 1,
                }
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 => {
                let start = i;
                while i < b.len()
                    && (b[i].is_ascii_alphanumeric() || matches!(b[i], b'_' | b'$') || b[i] >= 0x80)
                {
                    i += 1;
                }
                // Word boundaries are ASCII, so the slice is whole UTF-8.
                if let Some(w) = sql.get(start..i) {
                    out.last_mut().unwrap().push(Tok::Word(w));
                }
            }
            _ => i += 1,
        }
    }
    out.retain(|s| !s.is_empty());
    out
}

/// Functions that take a session-level advisory lock.
const SESSION_LOCKS: [&str; 4] = [
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
];

/// What in `sql` leaves state in the session past its transaction (a setting, a temporary
/// table, a session advisory lock, a LISTEN, a cursor WITH HOLD, an SQL-level PREPARE, a
/// LOAD), named for the client; `None` if nothing does.
pub fn session_state(sql: &Statements) -> Option<&'static str> {
    for s in &sql.0 {
        let w = |i: usize| s.get(i);
        let Some(first) = w(0) else { continue };
        let why = if first.is("set") {
            let scoped =
                w(1).is_some_and(|t| t.is("local") || t.is("transaction") || t.is("constraints"));
            (!scoped).then_some("SET (a session setting; SET LOCAL is not kept)")
        } else if first.is("listen") {
            Some("LISTEN")
        } else if first.is("prepare") {
            Some("PREPARE (an SQL-level prepared statement)")
        } else if first.is("load") {
            Some("LOAD")
        } else if first.is("create") && {
            // CREATE [LOCAL | GLOBAL] TEMP[ORARY] ...
            let temp = |t: Option<&Tok>| t.is_some_and(|t| t.is("temp") || t.is("temporary"));
            let scope = w(1).is_some_and(|t| t.is("local") || t.is("global"));
            temp(w(1)) || (scope && temp(w(2)))
        } {
            Some("a temporary table")
        } else if first.is("declare") && s.windows(2).any(|p| p[0].is("with") && p[1].is("hold")) {
            Some("a cursor WITH HOLD")
        } else if s
            .windows(2)
            .any(|p| p[1] == Tok::Open && SESSION_LOCKS.iter().any(|f| p[0].is(f)))
        {
            Some("a session-level advisory lock")
        } else if s.iter().enumerate().any(|(i, t)| {
            // set_config(name, value, is_local): a session setting unless `true` follows (the
            // lexer does not see where its arguments end: without a `true`, it counts as one).
            t.is("set_config")
                && s.get(i + 1) == Some(&Tok::Open)
                && !s[i + 2..].iter().any(|t| t.is("true"))
        }) {
            Some("set_config() of a session setting")
        } else {
            None
        };
        if why.is_some() {
            return why;
        }
    }
    None
}

/// A `DEALLOCATE` the pooler answers itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deallocate {
    All,
    Name(String),
}

/// `sql` if it is one `DEALLOCATE [PREPARE] name | ALL` and nothing else.
pub fn deallocate(sql: &Statements) -> Option<Deallocate> {
    let [s] = sql.0.as_slice() else { return None };
    let (first, mut rest) = s.split_first()?;
    if !first.is("deallocate") {
        return None;
    }
    if rest.len() == 2 && rest[0].is("prepare") {
        rest = &rest[1..];
    }
    match rest {
        [t] if t.is("all") => Some(Deallocate::All),
        [Tok::Word(n)] => Some(Deallocate::Name(n.to_lowercase())),
        [Tok::Quoted(n)] => Some(Deallocate::Name(n.clone())),
        _ => None,
    }
}

/// How a transaction ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionEnd {
    Commit,
    Rollback,
}

/// `sql` if it is one statement that ends the transaction: `COMMIT`/`END` (not `COMMIT
/// PREPARED`) or `ROLLBACK`/`ABORT` (not `ROLLBACK TO` a savepoint, not `ROLLBACK PREPARED`).
pub fn transaction_end(sql: &Statements) -> Option<TransactionEnd> {
    let [s] = sql.0.as_slice() else { return None };
    let second = s.get(1);
    let plain =
        |t: Option<&Tok>| t.is_none_or(|t| t.is("work") || t.is("transaction") || t.is("and"));
    let first = s.first()?;
    if (first.is("commit") || first.is("end")) && plain(second) {
        Some(TransactionEnd::Commit)
    } else if (first.is("rollback") || first.is("abort")) && plain(second) {
        Some(TransactionEnd::Rollback)
    } else {
        None
    }
}

/// Whether `sql` holds a `DISCARD ALL` (which drops every prepared statement of the session).
pub fn discards_all(sql: &Statements) -> bool {
    sql.0
        .iter()
        .any(|s| s.len() >= 2 && s[0].is("discard") && s[1].is("all"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_state_is_seen_and_transaction_state_is_not() {
        for sql in [
            "SET statement_timeout = 100",
            "set search_path to x",
            "SELECT 1; SET TIME ZONE 'UTC'",
            ";; SET search_path TO x",
            "LISTEN jobs",
            "CREATE TEMP TABLE t (i int)",
            "create local temporary table t (i int)",
            "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
            "PREPARE q AS SELECT 1",
            "SELECT pg_advisory_lock(1)",
            "SELECT set_config('search_path', 'x', false)",
            "select SET_CONFIG('a.b', $1, is_local)",
            "select PG_TRY_ADVISORY_LOCK (42)",
            "SET SESSION AUTHORIZATION x",
        ] {
            assert!(session_state(&read(sql)).is_some(), "{sql}");
        }
        for sql in [
            "SET LOCAL statement_timeout = 100",
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "SELECT 'SET x = 1', $$LISTEN y$$, $t$ pg_advisory_lock( $t$",
            "-- SET x\nSELECT 1 /* LISTEN /* nested */ y */",
            "SELECT pg_advisory_xact_lock(1)",
            "SELECT \"pg_advisory_lock\" FROM t",
            "INSERT INTO t VALUES (E'it\\'s; LISTEN x')",
            "RESET ALL",
            "UNLISTEN *",
            "DECLARE c CURSOR FOR SELECT 1",
            "CREATE TABLE temp (i int)",
            "SELECT $1::int",
            "SELECT set_config('request.jwt.claims', $1, true)",
            "SELECT current_setting('search_path')",
        ] {
            assert_eq!(session_state(&read(sql)), None, "{sql}");
        }
    }

    #[test]
    fn deallocate_is_read_only_when_it_is_the_whole_query() {
        assert_eq!(
            deallocate(&read("DEALLOCATE _pg3_1")),
            Some(Deallocate::Name("_pg3_1".into()))
        );
        assert_eq!(
            deallocate(&read("deallocate prepare \"S_1\";")),
            Some(Deallocate::Name("S_1".into()))
        );
        assert_eq!(deallocate(&read("DEALLOCATE ALL")), Some(Deallocate::All));
        assert_eq!(
            deallocate(&read("DEALLOCATE prepare")),
            Some(Deallocate::Name("prepare".into()))
        );
        assert_eq!(deallocate(&read("DEALLOCATE x; SELECT 1")), None);
        assert_eq!(deallocate(&read("SELECT 1")), None);
        assert!(discards_all(&read("discard all")));
        assert_eq!(
            transaction_end(&read("COMMIT")),
            Some(TransactionEnd::Commit)
        );
        assert_eq!(
            transaction_end(&read("end work;")),
            Some(TransactionEnd::Commit)
        );
        assert_eq!(
            transaction_end(&read("ROLLBACK")),
            Some(TransactionEnd::Rollback)
        );
        assert_eq!(
            transaction_end(&read("abort")),
            Some(TransactionEnd::Rollback)
        );
        assert_eq!(transaction_end(&read("ROLLBACK TO SAVEPOINT a")), None);
        assert_eq!(transaction_end(&read("COMMIT PREPARED 'x'")), None);
        assert_eq!(transaction_end(&read("COMMIT; SELECT 1")), None);
        assert!(!discards_all(&read("DISCARD PLANS")));
    }
}
