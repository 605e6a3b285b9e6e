// The Neon serverless driver (@neondatabase/serverless) against SPG99, with nothing set but
// fetchEndpoint, wsProxy and ws: SQL over HTTP (neon(), transaction()), then Pool and Client
// over WebSockets. The Gateway's certificate is trusted through NODE_EXTRA_CA_CERTS.
//
// node neon_driver.js DSN HTTP_SQL_URL WEBSOCKET_URL POOLED_DSN
// Prints one JSON line: what each step saw.
const { neon, neonConfig, Pool, Client, NeonDbError } = require("@neondatabase/serverless");
const ws = require("ws");

const [dsn, httpSqlUrl, websocketUrl, pooledDsn] = process.argv.slice(2);
neonConfig.fetchEndpoint = httpSqlUrl;
neonConfig.wsProxy = websocketUrl.replace(/^wss:\/\//, "");
neonConfig.webSocketConstructor = ws;

function check(cond, what) {
  if (!cond) throw new Error(`not so: ${what}`);
}

async function errorOf(promise) {
  try {
    await promise;
  } catch (e) {
    return e;
  }
  throw new Error("no error");
}

async function overHttp(report) {
  const sql = neon(dsn);
  await sql`DROP TABLE IF EXISTS items`;
  await sql`CREATE TABLE items (id int8 PRIMARY KEY, doc jsonb, tags text[], at timestamptz, price numeric)`;
  const big = 9007199254740993n; // above 2^53: exact only as text
  const at = new Date("2026-12-05T01:02:03.456Z");
  const inserted = await sql`INSERT INTO items VALUES (${big.toString()}, ${{ a: [1, "two", null], b: { c: true } }}, ${["x", "y,z", 'q"uote']}, ${at}, ${"12.50"}) RETURNING id`;
  check(inserted.length === 1 && inserted[0].id === big.toString(), `int8 back as text: ${JSON.stringify(inserted)}`);
  const [row] = await sql`SELECT id, doc, tags, at, price, ${42}::int AS n, ${true}::bool AS b, ${null}::text AS nothing FROM items WHERE id = ${big.toString()}`;
  check(JSON.stringify(row.doc) === JSON.stringify({ a: [1, "two", null], b: { c: true } }), `jsonb: ${JSON.stringify(row.doc)}`);
  check(JSON.stringify(row.tags) === JSON.stringify(["x", "y,z", 'q"uote']), `text[]: ${JSON.stringify(row.tags)}`);
  check(row.at instanceof Date && row.at.getTime() === at.getTime(), `timestamptz: ${row.at}`);
  check(row.price === "12.50" && row.n === 42 && row.b === true && row.nothing === null, `scalars: ${JSON.stringify(row)}`);
  report.http_types = true;

  // A query through sql.query() with full results.
  const full = await sql.query("SELECT generate_series(1, $1::int) AS i", [3], { fullResults: true, arrayMode: true });
  check(full.rowCount === 3 && full.command === "SELECT" && JSON.stringify(full.rows) === "[[1],[2],[3]]", `full results: ${JSON.stringify(full)}`);
  check(full.fields[0].name === "i" && full.fields[0].dataTypeID === 23, `fields: ${JSON.stringify(full.fields)}`);

  // A transaction: all of it, or none of it.
  const [a, b] = await sql.transaction([sql`INSERT INTO items (id) VALUES (1) RETURNING id`, sql`SELECT count(*)::int AS n FROM items`], {
    isolationLevel: "Serializable",
  });
  check(a[0].id === "1" && b[0].n === 2, `transaction: ${JSON.stringify([a, b])}`);
  const failed = await errorOf(sql.transaction([sql`INSERT INTO items (id) VALUES (2)`, sql`INSERT INTO items (id) VALUES (1)`]));
  check(failed instanceof NeonDbError && failed.code === "23505" && failed.constraint === "items_pkey", `failed transaction: ${failed}`);
  const [{ n }] = await sql`SELECT count(*)::int AS n FROM items`;
  check(n === 2, `the failed transaction left nothing: ${n}`);
  report.http_transaction = true;

  const syntax = await errorOf(sql`SELEC 1`);
  check(syntax.code === "42601" && syntax.position === "1", `syntax error: ${syntax.code} ${syntax.position}`);
  const readOnly = await errorOf(sql.transaction([sql`INSERT INTO items (id) VALUES (3)`], { readOnly: true }));
  check(readOnly.code === "25006", `read-only transaction: ${readOnly.code}`);
  report.http_errors = true;
}

async function overWebSockets(report) {
  const pool = new Pool({ connectionString: dsn });
  const client = await pool.connect();
  try {
    await client.query("BEGIN");
    await client.query("INSERT INTO items (id) VALUES ($1)", [10]);
    await client.query("ROLLBACK");
    await client.query("BEGIN");
    await client.query("INSERT INTO items (id) VALUES ($1)", [11]);
    await client.query("COMMIT");
    const { rows } = await client.query({ text: "SELECT id FROM items WHERE id BETWEEN $1 AND $2 ORDER BY id", values: [10, 11] });
    check(JSON.stringify(rows) === JSON.stringify([{ id: "11" }]), `pool transactions: ${JSON.stringify(rows)}`);
    const err = await errorOf(client.query("SELECT 1/0"));
    check(err.code === "22012", `an error over the socket: ${err.code}`);
    const again = await client.query("SELECT 2 AS two");
    check(again.rows[0].two === 2, "the session goes on after an error");
  } finally {
    client.release();
  }
  // Several at once through the pool.
  const many = await Promise.all([1, 2, 3, 4].map((i) => pool.query("SELECT $1::int AS i, pg_backend_pid() AS pid", [i])));
  check(many.every((r, k) => r.rows[0].i === k + 1), "pool queries");
  await pool.end();
  report.websocket_pool = true;

  const c = new Client(dsn);
  await c.connect();
  const { rows } = await c.query("SELECT current_user AS u, current_database() AS d");
  check(rows[0].d === new URL(dsn).pathname.slice(1), `client: ${JSON.stringify(rows)}`);
  await c.end();
  report.websocket_client = true;

  const bad = new Client(dsn.replace(/:([^:@/]+)@/, ":wrong-password@"));
  bad.on("error", () => {}); // the server closes the socket after its refusal
  // With the driver's pipelined connect (its default), connect() resolves before the server
  // answers: the refusal comes with the first query.
  const refused = await errorOf(bad.connect().then(() => bad.query("SELECT 1")));
  check(refused.code === "28P01", `wrong password over a socket: ${refused.code} ${refused.message}`);
  report.websocket_wrong_password = true;

  // The pooled connection string over a socket: the pooler's relay, transaction by transaction.
  const pooled = new Pool({ connectionString: pooledDsn });
  const pc = await pooled.connect();
  await pc.query("BEGIN");
  await pc.query("INSERT INTO items (id) VALUES (12)");
  await pc.query("COMMIT");
  const named = await pc.query({ name: "by_id", text: "SELECT id FROM items WHERE id = $1", values: [12] });
  const again = await pc.query({ name: "by_id", text: "SELECT id FROM items WHERE id = $1", values: [12] });
  check(named.rows[0].id === "12" && again.rows[0].id === "12", "a named statement through the pooled socket");
  pc.release();
  await pooled.end();
  report.websocket_pooled = true;
}

(async () => {
  const report = {};
  try {
    await overHttp(report);
    await overWebSockets(report);
  } catch (e) {
    console.error(e);
    console.log(JSON.stringify(report));
    process.exit(1);
  }
  console.log(JSON.stringify(report));
  process.exit(0);
})();
