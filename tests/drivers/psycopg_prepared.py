"""psycopg 3 through the pooler: server-side prepared statements from its first execution
(prepare_threshold=0), the protocol's own Describe of a statement prepared in an earlier
transaction on another backend (libpq's low-level calls), DEALLOCATE, a name taken twice,
and each client's settings its own. Exits non-zero with what failed.

usage: psycopg_prepared.py POOLED_DSN
"""
import sys
import threading
import time

import psycopg
from psycopg import pq

dsn = sys.argv[1]


def pid(conn):
    return conn.execute("SELECT pg_backend_pid()").fetchone()[0]


# Server-side prepares from the first execution, in and out of transactions, two clients
# interleaved so that each meets statements on backends they were not prepared on.
a = psycopg.connect(dsn, prepare_threshold=0, autocommit=True)
b = psycopg.connect(dsn, prepare_threshold=0, autocommit=True)
for i in range(50):
    for c in (a, b):
        with c.transaction():
            assert c.execute("SELECT %s::int + 1", (i,)).fetchone()[0] == i + 1
        assert c.execute("SELECT %s::text || 'x'", (str(i),)).fetchone()[0] == f"{i}x"
with a.pipeline():
    cur = [a.execute("SELECT %s::int * 2", (i,)) for i in range(20)]
assert [c.fetchone()[0] for c in cur] == [i * 2 for i in range(20)]

# libpq's low level: PREPARE on one backend, then, while another client holds that backend in
# a transaction, a Describe and an Execute of it on another.
low = pq.PGconn.connect(dsn.encode())
assert low.status == pq.ConnStatus.OK, low.error_message
r = low.prepare(b"s1", b"SELECT $1::int + 41 AS answer")
assert r.status == pq.ExecStatus.COMMAND_OK, r.error_message
first = low.exec_(b"SELECT pg_backend_pid()").get_value(0, 0)
holders = []
for _ in range(3):
    h = psycopg.connect(dsn)
    h.execute("SELECT 1")  # a transaction begins: its backend is held
    holders.append(h)
d = low.describe_prepared(b"s1")
assert d.status == pq.ExecStatus.COMMAND_OK, d.error_message
assert d.nparams == 1 and d.fname(0) == b"answer", (d.nparams, d.fname(0))
r = low.exec_prepared(b"s1", [b"1"])
assert r.status == pq.ExecStatus.TUPLES_OK and r.get_value(0, 0) == b"42", r.error_message
second = low.exec_(b"SELECT pg_backend_pid()").get_value(0, 0)
for h in holders:
    h.close()

# A name taken twice: 42P05, as PostgreSQL says it; the client goes on.
r = low.prepare(b"s1", b"SELECT 2")
assert r.status == pq.ExecStatus.FATAL_ERROR and r.error_field(pq.DiagnosticField.SQLSTATE) == b"42P05", r.error_message
# DEALLOCATE forgets it: then 26000, and the name can be taken again.
r = low.exec_(b"DEALLOCATE s1")
assert r.status == pq.ExecStatus.COMMAND_OK, r.error_message
r = low.exec_prepared(b"s1", [b"1"])
assert r.error_field(pq.DiagnosticField.SQLSTATE) == b"26000", r.error_message
r = low.prepare(b"s1", b"SELECT 7")
assert r.status == pq.ExecStatus.COMMAND_OK, r.error_message
assert low.exec_prepared(b"s1", []).get_value(0, 0) == b"7"
# A statement that fails to prepare leaves no name behind.
r = low.prepare(b"bad", b"SELECT * FROM no_such_table")
assert r.error_field(pq.DiagnosticField.SQLSTATE) == b"42P01", r.error_message
r = low.prepare(b"bad", b"SELECT 8")
assert r.status == pq.ExecStatus.COMMAND_OK, r.error_message
low.finish()

# Settings: SET keeps its client on its backend; nobody else sees it. SET LOCAL ends with its
# transaction.
setter = psycopg.connect(dsn, autocommit=True)
setter.execute("SET statement_timeout = '1234ms'")
others = [psycopg.connect(dsn, autocommit=True) for _ in range(5)]
for _ in range(10):
    for o in others:
        assert o.execute("SHOW statement_timeout").fetchone()[0] == "0"
assert setter.execute("SHOW statement_timeout").fetchone()[0] == "1234ms"
local = psycopg.connect(dsn)
local.execute("SET LOCAL statement_timeout = '999ms'")
assert local.execute("SHOW statement_timeout").fetchone()[0] == "999ms"
local.commit()
for o in others + [local]:
    assert o.execute("SHOW statement_timeout").fetchone()[0] == "0"

# A cancel reaches that client's query, and no other's.
slow = psycopg.connect(dsn, autocommit=True)
other = psycopg.connect(dsn, autocommit=True)
outcome = {}


def run(name, conn, sql):
    try:
        conn.execute(sql)
        outcome[name] = "done"
    except psycopg.Error as e:
        outcome[name] = e.sqlstate


t1 = threading.Thread(target=run, args=("slow", slow, "SELECT pg_sleep(30)"))
t2 = threading.Thread(target=run, args=("other", other, "SELECT pg_sleep(2)"))
t1.start()
t2.start()
deadline = time.time() + 10
watch = psycopg.connect(dsn, autocommit=True)
while time.time() < deadline:
    n = watch.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(%' AND state = 'active'"
    ).fetchone()[0]
    if n == 2:
        break
    time.sleep(0.05)
slow.cancel()
t1.join(10)
t2.join(10)
assert outcome == {"slow": "57014", "other": "done"}, outcome
assert slow.execute("SELECT 1").fetchone()[0] == 1
print(f"ok: backends {first} then {second}")
