// node-postgres through the pooler: named prepared statements (a statement is parsed once per
// connection, then only bound), in and out of transactions, by many clients at once, and a
// pg.Pool of its own on top. Prints one JSON line; exits non-zero with what failed.
//
// usage: node node_named.js POOLED_DSN CLIENTS
const { Client, Pool } = require('pg');

const [dsn, clients] = [process.argv[2], Number(process.argv[3])];
const ssl = { rejectUnauthorized: false };
const connectionString = dsn.replace(/[?&]sslmode=[^&]*/, '');

async function client(i) {
  const c = new Client({ connectionString, ssl });
  await c.connect();
  try {
    for (let n = 0; n < 10; n++) {
      await c.query('BEGIN');
      await c.query({ name: 'add', text: 'INSERT INTO node_rows (client, n) VALUES ($1, $2)', values: [i, n] });
      const r = await c.query({ name: 'count', text: 'SELECT count(*)::int AS n FROM node_rows WHERE client = $1', values: [i] });
      if (r.rows[0].n !== n + 1) throw new Error(`client ${i} saw ${r.rows[0].n} rows after ${n + 1}`);
      await c.query('COMMIT');
      const twice = await c.query({ name: 'twice', text: 'SELECT $1::int * 2 AS v', values: [n] });
      if (twice.rows[0].v !== n * 2) throw new Error(`client ${i}: ${n} * 2 = ${twice.rows[0].v}`);
    }
  } finally {
    await c.end();
  }
}

(async () => {
  const setup = new Client({ connectionString, ssl });
  await setup.connect();
  await setup.query('CREATE TABLE IF NOT EXISTS node_rows (client int, n int, PRIMARY KEY (client, n))');
  await setup.end();
  const results = await Promise.allSettled([...Array(clients).keys()].map(client));
  const errors = results.filter((r) => r.status === 'rejected').map((r) => String(r.reason));
  const pool = new Pool({ connectionString, ssl, max: 20 });
  const sums = await Promise.all([...Array(200).keys()].map((n) =>
    pool.query({ name: 'sum', text: 'SELECT $1::int + 1 AS v', values: [n] }).then((r) => r.rows[0].v)));
  if (sums.some((v, n) => v !== n + 1)) errors.push('pool answers wrong');
  const rows = (await pool.query('SELECT count(*)::int AS n FROM node_rows')).rows[0].n;
  await pool.end();
  console.log(JSON.stringify({ ok: clients - errors.length, errors: errors.slice(0, 5), rows }));
  process.exit(errors.length ? 1 : 0);
})().catch((e) => { console.error(e); process.exit(1); });
