// SPG99 Console: plain JavaScript over the public API v2, live through GET /v2/events.
//
// - The API token lives in sessionStorage only; every call sends it as a bearer header, and
//   the event stream is opened with a single-use ticket, so the token never enters a URL.
// - Views re-read what they show when the stream says something changed; a dropped stream
//   reconnects with a fresh ticket from the last event id it saw.
// - Mutating requests carry an Idempotency-Key, kept for a form until it succeeds, so a
//   repeated click or a retry after a network error creates one thing.
'use strict';

// The server fills in the event types it can send (EventSource needs a listener per type).
const EVENT_TYPES = ["__EVENT_TYPES__"];

const TOKEN_KEY = 'spg99.token';
const EMAIL_KEY = 'spg99.email';

// ---------------------------------------------------------------------------------------
// DOM helpers

function append(el, kids) {
  for (const k of kids.flat(Infinity)) {
    if (k == null || k === false) continue;
    el.append(k instanceof Node ? k : String(k));
  }
}

function h(tag, props, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v == null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'text') el.textContent = v;
    else if (k === 'class') el.className = v;
    else if (k === 'value') el.value = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, kids);
  return el;
}

const SVG = 'http://www.w3.org/2000/svg';
function s(tag, attrs, ...kids) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  append(el, kids);
  return el;
}

const $ = (sel, root = document) => root.querySelector(sel);
let uid = 0;
const nextId = (p) => `${p}-${++uid}`;

// Replaces a region's content and gives the focus back to the control that had it, so a
// live update never throws a keyboard user out of the page.
function renderInto(region, ...nodes) {
  const fid = document.activeElement && region.contains(document.activeElement)
    ? document.activeElement.getAttribute('data-fid') : null;
  region.replaceChildren();
  append(region, nodes);
  if (fid) {
    const again = region.querySelector(`[data-fid="${CSS.escape(fid)}"]`);
    if (again) again.focus();
  }
}

function field(labelText, control, hint) {
  return h('label', {}, labelText, control, hint ? h('span', { class: 'hint' }, hint) : null);
}

function badge(text, tone) {
  return h('span', { class: 'badge', 'data-tone': tone || null }, text);
}

function table(headers, rows, empty) {
  if (!rows.length) return h('p', { class: 'empty' }, empty);
  return h('div', { class: 'scroll' },
    h('table', {},
      h('thead', {}, h('tr', {}, headers.map((x) => h('th', { scope: 'col', class: x.num ? 'num' : null }, x.label || x)))),
      h('tbody', {}, rows)));
}

function dl(pairs) {
  return h('dl', { class: 'fields' }, pairs.filter(Boolean).map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
}

function crumbs(...items) {
  return h('nav', { 'aria-label': 'Breadcrumb' },
    h('ol', { class: 'crumbs' }, items.map(([text, href]) => h('li', {}, href ? h('a', { href }, text) : h('span', { 'aria-current': 'page' }, text)))));
}

// ---------------------------------------------------------------------------------------
// Formatting

function when(iso) {
  if (!iso) return '—';
  const d = new Date(iso);
  return h('time', { datetime: iso, title: iso }, d.toLocaleString());
}

function inWords(ms) {
  const secs = Math.round(Math.abs(ms) / 1000);
  const text = secs < 90 ? `${secs} s` : secs < 5400 ? `${Math.round(secs / 60)} min` : `${Math.round(secs / 3600)} h`;
  return ms >= 0 ? `in ${text}` : `${text} ago`;
}

// A deadline with a countdown the ticker keeps current.
function countdown(iso) {
  if (!iso) return '—';
  return h('span', {}, when(iso), ' ', h('span', { class: 'countdown hint', 'data-deadline': iso }, `(${inWords(Date.parse(iso) - Date.now())})`));
}

function tick() {
  for (const el of document.querySelectorAll('[data-deadline]')) {
    el.textContent = `(${inWords(Date.parse(el.getAttribute('data-deadline')) - Date.now())})`;
  }
}

const STATE_TONE = { running: 'ok', starting: 'info', stopping: 'warn', stopped: null, deleting: 'warn', failed: 'bad', active: 'ok', restoring: 'info' };
const STATE_WORDS = {
  stopped: 'No writer runs; the first connection through the Gateway starts it.',
  starting: 'A worker is starting the writer.',
  running: 'A writer serves connections.',
  stopping: 'The writer is stopping after inactivity.',
  deleting: 'Being deleted: it disappears once its worker and leases are released.',
  failed: 'Failed: the reason is below.',
  restoring: 'Being restored from the storage repository: new connections wait until it serves.',
};
const SCALE_WORDS = {
  STABLE: 'Nothing is moving.',
  PREPARING_CANDIDATE: 'A candidate writer is being prepared on the target profile.',
  CUTOVER: 'Cutover: new connections wait a moment while the candidate takes over. This is a normal, short phase.',
  FAILED: 'The last handoff failed; the previous writer still serves.',
};
const stateBadge = (state) => badge(state, STATE_TONE[state]);
const scaleBadge = (st) => badge(st, st === 'STABLE' ? null : st === 'FAILED' ? 'bad' : 'info');
const seconds = (x) => `${x.toFixed(1)} s`;
function bytes(n) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}
// A time as the `datetime-local` control shows it, in UTC, to the second.
const utcInput = (iso) => (iso ? iso.slice(0, 19) : '');
// A time in UTC to the second, as the restore form takes it.
const utc = (iso) => (iso ? h('time', { datetime: iso, title: iso }, `${iso.slice(0, 19).replace('T', ' ')} UTC`) : '—');

function perms(p) {
  const on = Object.entries(p || {}).filter(([, v]) => v).map(([k]) => k);
  return on.length ? on.join(', ') : 'read only';
}

// ---------------------------------------------------------------------------------------
// The API

class ApiError extends Error {
  constructor(status, body) {
    const e = (body && body.error) || {};
    super(e.message || (status ? `the server answered ${status}` : 'the server cannot be reached'));
    this.status = status;
    this.code = e.code || (status ? 'http_' + status : 'unreachable');
    this.field = e.field || null;
  }
}

const session = { token: null, email: null, key: null, account: null, rotating: false };

function idemKey() {
  const b = new Uint8Array(16);
  crypto.getRandomValues(b);
  return 'console-' + Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}

async function api(method, path, body, idem) {
  const used = session.token;
  const headers = { Authorization: `Bearer ${used}` };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (idem) headers['Idempotency-Key'] = idem;
  let res;
  try {
    res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: 'no-store' });
  } catch {
    throw new ApiError(0, null);
  }
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!res.ok) {
    const err = new ApiError(res.status, data);
    // A read that crossed this page's own rotation of its key used the old secret: not an
    // ended session.
    if (res.status === 401 && session.key && used === session.token && !session.rotating) {
      logout(`Your session ended: ${err.message}.`);
    }
    throw err;
  }
  return { data, version: Number(res.headers.get('X-Resource-Version')) || 0 };
}

// Every page of a list.
async function all(path) {
  const items = [];
  let cursor = null;
  do {
    const sep = path.includes('?') ? '&' : '?';
    const r = await api('GET', `${path}${sep}limit=1000${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`);
    items.push(...r.data.items);
    cursor = r.data.next_cursor;
  } while (cursor);
  return items;
}

const enc = encodeURIComponent;
const tenantPath = (t) => `/v2/tenants/${enc(t)}`;
const dbPath = (t, d) => `${tenantPath(t)}/dbs/${enc(d)}`;
const isOperator = () => session.key && session.key.scope === 'global';
const isTenantKey = () => session.key && session.key.scope === 'tenant';
const can = (p) => session.key && session.key.permissions[p];

let sizesCache = null;
async function sizes() {
  if (!sizesCache) sizesCache = (await api('GET', '/v2/sizes')).data;
  return sizesCache;
}

function errorText(err) {
  if (!(err instanceof ApiError)) return String(err);
  return err.field ? `${err.message} (${err.field})` : err.message;
}

// A form whose submission is one mutating request: the button waits for the answer, the
// API's message is shown next to the form, and one Idempotency-Key covers every retry of
// the same intent.
function mutation(form, run) {
  let idem = idemKey();
  const error = h('p', { class: 'error', role: 'alert' });
  form.append(error);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const button = form.querySelector('button[type="submit"]');
    if (button.disabled) return;
    button.disabled = true;
    error.textContent = '';
    try {
      await run(idem);
      idem = idemKey();
    } catch (err) {
      if (!(err instanceof ApiError) || err.status) idem = idemKey();
      error.textContent = errorText(err);
      const bad = err.field && form.querySelector(`[data-field="${CSS.escape(err.field)}"]`);
      if (bad) bad.focus();
    } finally {
      button.disabled = false;
    }
  });
  return form;
}

// ---------------------------------------------------------------------------------------
// Dialogs and copying

function ask({ title, text, confirm, danger, typed }) {
  const dialog = $('#dialog');
  return new Promise((resolve) => {
    const input = typed ? h('input', { type: 'text', autocomplete: 'off', spellcheck: 'false', id: 'dialog-typed' }) : null;
    const ok = h('button', { type: 'button', class: danger ? 'danger' : null, disabled: typed ? true : null, id: 'dialog-confirm' }, confirm);
    const cancel = h('button', { type: 'button', class: 'quiet', id: 'dialog-cancel' }, 'Cancel');
    if (input) input.addEventListener('input', () => { ok.disabled = input.value !== typed; });
    let answer = false;
    ok.addEventListener('click', () => { answer = true; dialog.close(); });
    cancel.addEventListener('click', () => dialog.close());
    dialog.replaceChildren(
      h('h2', { id: 'dialog-title' }, title),
      h('p', {}, text),
      input ? field(`Type “${typed}” to confirm`, input) : null,
      h('div', { class: 'actions' }, cancel, ok));
    dialog.addEventListener('close', () => resolve(answer), { once: true });
    dialog.showModal();
    (input || cancel).focus();
  });
}

async function copy(text, button) {
  const before = button.textContent;
  try {
    await navigator.clipboard.writeText(text);
    button.textContent = 'Copied';
  } catch {
    button.textContent = 'Select and copy';
  }
  setTimeout(() => { button.textContent = before; }, 1500);
}

function copyButton(text, what, fid) {
  const b = h('button', { type: 'button', class: 'quiet small', 'aria-label': `Copy ${what}`, 'data-fid': fid || null }, 'Copy');
  b.addEventListener('click', () => copy(text, b));
  return b;
}

function secretLine(value, what, shown, fid) {
  return h('span', { class: 'secret' },
    h('code', { class: 'value' }, shown ? value : '••••••••••••'),
    shown ? copyButton(value, what, fid) : null);
}

// A token shown once, right after it was issued or rotated.
function onceCard(title, token) {
  return h('section', { class: 'card once', 'aria-labelledby': 'once-title' },
    h('h2', { id: 'once-title' }, title),
    h('p', {}, 'Copy it now: it is not shown again.'),
    h('span', { class: 'secret' }, h('code', { class: 'value', id: 'new-token' }, token), copyButton(token, 'the token')));
}

// ---------------------------------------------------------------------------------------
// The live stream

const live = { es: null, last: 0, attempt: 0, timer: 0 };

function setLive(state, text) {
  const el = $('#live');
  el.dataset.state = state;
  el.textContent = text;
}

// Opens GET /v2/events with a fresh ticket; `onFrame` gets each frame, `onState` the
// connection's state. Reconnects from the last id seen, with a new ticket each time.
function follow(query, since, onEvent, onState) {
  const f = { es: null, last: since, attempt: 0, timer: 0, closed: false };
  async function connect() {
    if (f.closed) return;
    onState('connecting', f.attempt ? 'Reconnecting…' : 'Connecting…');
    let ticket;
    try {
      ticket = (await api('POST', '/v2/events/tickets')).data.ticket;
    } catch (err) {
      // A 401 ends the session (api() logs out), unless it crossed the page's own rotation.
      if (f.closed || (err.status === 401 && !session.rotating)) return;
      return retry();
    }
    if (f.closed) return;
    const params = new URLSearchParams(query);
    params.set('ticket', ticket);
    params.set('since', String(f.last));
    const es = new EventSource(`/v2/events?${params}`);
    f.es = es;
    es.onopen = () => { f.attempt = 0; onState('live', 'Live', true); };
    const frame = (ev) => {
      const seq = Number(ev.lastEventId);
      if (!(seq > f.last)) return;
      f.last = seq;
      if (ev.type === 'bookmark') return;
      let envelope;
      try { envelope = JSON.parse(ev.data); } catch { return; }
      onEvent(envelope);
    };
    for (const t of EVENT_TYPES) es.addEventListener(t, frame);
    es.addEventListener('bookmark', frame);
    es.onerror = () => {
      es.close();
      if (f.es === es) { f.es = null; retry(); }
    };
  }
  function retry() {
    if (f.closed) return;
    onState('off', 'Offline: reconnecting…');
    const delay = Math.min(5000, 250 * 2 ** f.attempt++);
    f.timer = setTimeout(connect, delay);
  }
  f.close = () => {
    f.closed = true;
    clearTimeout(f.timer);
    if (f.es) f.es.close();
  };
  connect();
  return f;
}

function startLive(since) {
  if (live.stream) live.stream.close();
  live.stream = follow({}, since, (envelope) => current && current.changed(envelope), (state, text, opened) => {
    setLive(state, text);
    // Whatever happened while the stream was down, the view reads it again.
    if (opened && current) current.changed(null);
  });
}

// ---------------------------------------------------------------------------------------
// Views: each mounts its frame once and refreshes its data when something changes.

let current = null;

class View {
  constructor(nav, title) {
    this.nav = nav;
    this.title = title;
    this.busy = false;
    this.again = false;
    this.gone = false;
  }

  // The frame: a heading and a region the data goes into.
  mount(main) {
    this.h1 = h('h1', { tabindex: '-1' }, this.title);
    this.body = h('div', { 'aria-live': 'off' });
    main.replaceChildren(...this.head(), this.h1, ...this.top(), this.body);
  }

  head() { return []; }
  top() { return []; }

  changed(_envelope) { this.refresh(); }

  async refresh() {
    // While the page rotates its own key, a read would still carry the old secret.
    if (this.busy || session.rotating) { this.again = true; return; }
    this.busy = true;
    try {
      await this.load();
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) {
        this.gone = true;
        renderInto(this.body, h('p', { class: 'empty', role: 'status' }, this.goneText || 'This no longer exists.'));
      } else if (!(err instanceof ApiError && (err.status === 0 || err.status === 401))) {
        renderInto(this.body, h('p', { class: 'error', role: 'alert' }, errorText(err)));
      }
    } finally {
      this.busy = false;
      if (this.again) { this.again = false; this.refresh(); }
    }
  }

  // A confirmed action: asks `question`, then runs one mutating request with an
  // Idempotency-Key of its own. The API's refusal is kept for the next render, which follows
  // at once.
  // An action, asked first when there is a `question` (none: at once).
  async act(question, run) {
    const idem = idemKey();
    if (question && !(await ask(question))) return;
    try {
      await run(idem);
      this.error = null;
    } catch (err) {
      this.error = errorText(err);
    }
    if (current === this) this.refresh();
  }

  // Where a view shows the last refused action.
  errorLine() {
    return h('p', { class: 'error', role: 'alert' }, this.error || '');
  }

  leave() {}
}

// ----- accounts (operator)

class AccountsView extends View {
  constructor() { super('accounts', 'Accounts'); }

  top() {
    const name = h('input', { type: 'text', id: 'account-name', 'data-field': 'name', required: true, autocomplete: 'off' });
    const email = h('input', { type: 'email', id: 'account-email', 'data-field': 'email', autocomplete: 'off' });
    const form = h('form', { class: 'row', 'aria-label': 'New account' },
      field('Name', name), field('Contact email', email, 'optional'),
      h('button', { type: 'submit' }, 'Create account'));
    mutation(form, async (idem) => {
      const body = { name: name.value.trim() };
      if (email.value.trim()) body.email = email.value.trim();
      await api('POST', '/v2/accounts', body, idem);
      form.reset();
    });
    return [h('section', { class: 'card' }, h('h2', {}, 'New account'), form)];
  }

  async load() {
    const [accounts, tenants] = await Promise.all([all('/v2/accounts'), all('/v2/tenants')]);
    const count = {};
    for (const t of tenants) count[t.account_id] = (count[t.account_id] || 0) + 1;
    renderInto(this.body, h('section', { class: 'card' }, h('h2', {}, `${accounts.length} accounts`),
      table(['Name', 'Contact email', 'State', { label: 'Tenants', num: true }, 'Account id', 'Created'],
        accounts.map((a) => h('tr', { 'data-account': a.account_id },
          h('td', {}, a.name), h('td', {}, a.email || '—'), h('td', {}, stateBadge(a.state)),
          h('td', { class: 'num' }, count[a.account_id] || 0), h('td', {}, h('code', {}, a.account_id)), h('td', {}, when(a.created_at)))),
        'No accounts yet.')));
  }
}

// ----- tenants

async function accountOptions(select) {
  const accounts = await all('/v2/accounts');
  const before = select.value;
  select.replaceChildren(...accounts.map((a) => h('option', { value: a.account_id }, `${a.name} (${a.account_id.slice(0, 8)})`)));
  if (before) select.value = before;
  return accounts;
}

class TenantsView extends View {
  constructor() { super('tenants', 'Tenants'); }

  top() {
    if (isTenantKey()) return [];
    if (!can('can_create_tenant')) {
      return [h('p', { class: 'hint' }, 'This key cannot create tenants (it lacks can_create_tenant).')];
    }
    const name = h('input', { type: 'text', id: 'tenant-name', 'data-field': 'name', required: true, autocomplete: 'off', spellcheck: 'false', pattern: '[a-z][a-z0-9_\\-]{0,62}' });
    const account = isOperator() ? h('select', { id: 'tenant-account', 'data-field': 'account' }) : null;
    if (account) accountOptions(account).catch(() => {});
    const form = h('form', { class: 'row', 'aria-label': 'New tenant' },
      field('Tenant name', name, 'lowercase letters, digits, _ and -'),
      account ? field('Account', account) : null,
      h('button', { type: 'submit', id: 'create-tenant' }, 'Create tenant'));
    mutation(form, async (idem) => {
      const body = { name: name.value.trim() };
      if (account) body.account = account.value;
      const r = await api('POST', '/v2/tenants', body, idem);
      fresh.set(r.data.tenant, r.data);
      location.hash = `#/tenants/${enc(r.data.tenant)}`;
    });
    return [h('section', { class: 'card' }, h('h2', {}, 'New tenant'), form)];
  }

  async load() {
    const tenants = await all('/v2/tenants');
    const op = isOperator();
    renderInto(this.body, h('section', { class: 'card' },
      h('h2', {}, `${tenants.length} ${tenants.length === 1 ? 'tenant' : 'tenants'}`),
      table(['Tenant', 'State', { label: 'Databases', num: true }, 'PostgreSQL user', op ? 'Account' : null, 'Created'].filter(Boolean),
        tenants.map((t) => h('tr', { 'data-tenant': t.tenant },
          h('td', {}, h('a', { href: `#/tenants/${enc(t.tenant)}`, 'data-fid': `t-${t.tenant}` }, t.tenant)),
          h('td', {}, stateBadge(t.state)),
          h('td', { class: 'num' }, t.databases),
          h('td', {}, h('code', {}, t.pg_user)),
          op ? h('td', {}, h('code', {}, t.account_id.slice(0, 8))) : null,
          h('td', {}, when(t.created_at)))),
        'No tenants yet. Create one above.')));
  }
}

// Credentials of tenants created in this page, shown right away.
const fresh = new Map();

// ----- one tenant

class TenantView extends View {
  constructor(tenant) {
    super('tenants', tenant);
    this.tenant = tenant;
    this.goneText = 'This tenant was deleted.';
    this.creds = fresh.get(tenant) || null;
    this.shown = !!this.creds;
    fresh.delete(tenant);
  }

  head() { return [crumbs(['Tenants', '#/tenants'], [this.tenant])]; }

  top() {
    if (!can('can_create_db')) return [];
    const name = h('input', { type: 'text', id: 'db-name', 'data-field': 'name', required: true, autocomplete: 'off', spellcheck: 'false' });
    const size = h('select', { id: 'db-size', 'data-field': 'size' });
    sizes().then((c) => {
      size.replaceChildren(...c.sizes.map((x) => h('option', { value: x.name }, `${x.name}: ${x.description}`)));
    }).catch(() => {});
    const ha = h('input', { type: 'checkbox', id: 'db-ha', 'data-field': 'ha' });
    const form = h('form', { class: 'row', 'aria-label': 'New database' },
      field('Database name', name), field('Size', size),
      h('label', { class: 'check' }, ha, 'High availability', h('span', { class: 'hint' }, 'a synchronous standby on another worker')),
      h('button', { type: 'submit', id: 'create-db' }, 'Create database'));
    mutation(form, async (idem) => {
      const body = { name: name.value.trim(), size: size.value };
      if (ha.checked) body.ha = true;
      await api('POST', `${tenantPath(this.tenant)}/dbs`, body, idem);
      form.reset();
      this.refresh();
    });
    this.createCard = h('section', { class: 'card' }, h('h2', {}, 'New database'), form);
    return [this.createCard];
  }

  async load() {
    const [t, dbs] = await Promise.all([api('GET', tenantPath(this.tenant)), all(`${tenantPath(this.tenant)}/dbs`)]);
    const tenant = t.data;
    if (this.shown && !this.creds) this.creds = (await api('GET', `${tenantPath(this.tenant)}/credentials`)).data;
    renderInto(this.h1, this.tenant, ' ', stateBadge(tenant.state));
    if (this.createCard) this.createCard.hidden = tenant.state !== 'active';
    renderInto(this.body,
      this.errorLine(),
      h('div', { class: 'grid' }, this.credentialsCard(tenant), this.aboutCard(tenant)),
      h('section', { class: 'card', 'aria-labelledby': 'dbs-title' },
        h('h2', { id: 'dbs-title' }, `Databases (${dbs.length})`),
        table(['Database', 'State', 'Size', 'Profile', 'Worker', { label: 'Connections', num: true }, 'Handoff'],
          branchTree(dbs).map(([d, depth]) => h('tr', { 'data-db': d.name, 'data-depth': String(depth) },
            h('td', {}, depth ? h('span', { class: 'branch-mark' }, `${'\u00a0\u00a0\u00a0'.repeat(depth - 1)}└ `) : null,
              h('a', { href: `#/tenants/${enc(this.tenant)}/dbs/${enc(d.name)}`, 'data-fid': `d-${d.name}` }, d.name),
              d.parent_db_id ? h('span', { class: 'hint' }, ` branch${d.parent_at ? ` at ${utc(d.parent_at)}` : ''}`) : null),
            h('td', { 'data-col': 'state' }, stateBadge(d.state)),
            h('td', {}, d.size),
            h('td', {}, profileText(d)),
            h('td', { 'data-col': 'worker' }, d.worker_id || '—'),
            h('td', { class: 'num' }, d.active_connections),
            h('td', {}, scaleBadge(d.scale_state)))),
          'No databases yet.')),
      this.dangerCard(tenant, dbs.length));
  }

  credentialsCard(tenant) {
    const c = this.shown ? this.creds : null;
    const toggle = h('button', { type: 'button', class: 'quiet', 'aria-expanded': String(this.shown), 'data-fid': 'reveal', id: 'reveal' }, this.shown ? 'Hide password' : 'Reveal password');
    toggle.addEventListener('click', () => {
      this.shown = !this.shown;
      if (!this.shown) this.creds = null;
      this.refresh();
    });
    const reset = h('button', { type: 'button', class: 'quiet', 'data-fid': 'reset', id: 'reset-password' }, 'Reset password…');
    reset.addEventListener('click', () => this.resetPassword());
    return h('section', { class: 'card', 'aria-labelledby': 'cred-title', id: 'credentials' },
      h('h2', { id: 'cred-title' }, 'Credentials'),
      dl([
        ['User', h('span', { class: 'secret' }, h('code', { class: 'value', id: 'pg-user' }, tenant.pg_user), copyButton(tenant.pg_user, 'the user', 'copy-user'))],
        ['Password', c ? h('span', { id: 'pg-password-line' }, secretLine(c.pg_password, 'the password', true, 'copy-password')) : h('span', { class: 'secret' }, h('code', { class: 'value' }, '••••••••••••'))],
        ['DSN', c ? h('span', { class: 'secret' }, h('code', { class: 'value', id: 'dsn-template' }, c.dsn_template), copyButton(c.dsn_template, 'the DSN template', 'copy-dsn')) : h('span', { class: 'hint' }, 'shown with the password; replace <db-name> with a database')],
        ['Pooled DSN', c ? h('span', { class: 'secret' }, h('code', { class: 'value', id: 'pooled-dsn-template' }, c.pooled_dsn_template), copyButton(c.pooled_dsn_template, 'the pooled DSN template', 'copy-pooled-dsn')) : h('span', { class: 'hint' }, 'transaction pooling, for many short-lived clients; shown with the password')],
        ['SQL over HTTP', c ? h('span', { class: 'secret' }, h('code', { class: 'value', id: 'http-sql-url' }, c.http_sql_url), copyButton(c.http_sql_url, 'the SQL over HTTP URL', 'copy-http-sql-url')) : h('span', { class: 'hint' }, 'for edge runtimes (the Neon serverless driver): shown with the password')],
        ['WebSockets', c ? h('span', { class: 'secret' }, h('code', { class: 'value', id: 'websocket-url' }, c.websocket_url), copyButton(c.websocket_url, 'the WebSocket URL', 'copy-websocket-url')) : '—'],
      ]),
      h('div', { class: 'actions' }, toggle, can('can_create_tenant') ? reset : null));
  }

  resetPassword() {
    return this.act({
      title: `Reset the password of ${this.tenant}?`,
      text: 'A new password is made now; the current one stops working within seconds, and applications need the new one to connect.',
      confirm: 'Reset password',
      danger: true,
    }, async (idem) => {
      this.creds = (await api('POST', `${tenantPath(this.tenant)}/credentials/reset`, {}, idem)).data;
      this.shown = true;
    });
  }

  aboutCard(tenant) {
    return h('section', { class: 'card', 'aria-labelledby': 'about-title' },
      h('h2', { id: 'about-title' }, 'Tenant'),
      dl([
        ['State', stateBadge(tenant.state)],
        ['Tenant id', h('code', {}, tenant.tenant_id)],
        ['Account', h('code', {}, tenant.account_id)],
        ['Created', when(tenant.created_at)],
      ]));
  }

  dangerCard(tenant, count) {
    if (!can('can_delete') || tenant.state !== 'active') return null;
    // Kept on the view: a live update rebuilds the card and must not untick it.
    const cascade = h('input', { type: 'checkbox', id: 'cascade', 'data-fid': 'cascade', checked: this.cascade || null });
    cascade.addEventListener('change', () => { this.cascade = cascade.checked; });
    const button = h('button', { type: 'button', class: 'danger', id: 'delete-tenant', 'data-fid': 'delete-tenant' }, 'Delete tenant…');
    button.addEventListener('click', () => this.act({
      title: `Delete tenant ${this.tenant}?`,
      text: cascade.checked ? `The tenant and its ${count} databases are deleted, with their data.` : 'The tenant is deleted. A tenant that still has databases is kept unless they are deleted too.',
      confirm: 'Delete tenant', danger: true, typed: this.tenant,
    }, (idem) => api('DELETE', `${tenantPath(this.tenant)}${cascade.checked ? '?cascade=true' : ''}`, undefined, idem)));
    return h('section', { class: 'card', 'aria-labelledby': 'danger-title' },
      h('h2', { id: 'danger-title' }, 'Delete'),
      count ? h('label', { class: 'check' }, cascade, `Also delete its ${count} ${count === 1 ? 'database' : 'databases'}`) : null,
      h('div', { class: 'actions' }, button));
  }
}

// The databases in the order of their branch tree: each branch under its parent (depth 1,
// 2, ...), the rest (and branches whose parent is gone) at the top level, by name.
function branchTree(dbs) {
  const ids = new Set(dbs.map((d) => d.db_id));
  const children = new Map();
  for (const d of dbs) {
    const parent = d.parent_db_id && ids.has(d.parent_db_id) ? d.parent_db_id : null;
    if (!children.has(parent)) children.set(parent, []);
    children.get(parent).push(d);
  }
  const out = [];
  const walk = (parent, depth) => {
    for (const d of children.get(parent) || []) {
      out.push([d, depth]);
      walk(d.db_id, depth + 1);
    }
  };
  walk(null, 0);
  return out;
}

function profileText(d) {
  if (!d.current_profile && !d.target_profile) return '—';
  if (d.target_profile && d.target_profile !== d.current_profile) return `${d.current_profile || '—'} → ${d.target_profile}`;
  return d.current_profile || d.target_profile;
}

// ----- one database

class DbView extends View {
  constructor(tenant, db) {
    super('tenants', db);
    this.tenant = tenant;
    this.db = db;
    this.goneText = 'This database was deleted.';
    this.shown = false;
  }

  head() { return [crumbs(['Tenants', '#/tenants'], [this.tenant, `#/tenants/${enc(this.tenant)}`], [this.db])]; }

  async load() {
    const d = (await api('GET', dbPath(this.tenant, this.db))).data;
    const dbs = await all(`${tenantPath(this.tenant)}/dbs`);
    const creds = this.shown ? (await api('GET', `${tenantPath(this.tenant)}/credentials`)).data : null;
    renderInto(this.h1, this.db, ' ', stateBadge(d.state));
    const yesNo = (b) => (b ? 'yes' : 'no');
    const onOff = (x) => (x ? 'on' : 'off');
    renderInto(this.body,
      this.errorLine(),
      this.connectCard(d, creds),
      h('div', { class: 'grid' },
        h('section', { class: 'card', 'aria-labelledby': 'life-title', id: 'lifecycle' },
          h('h2', { id: 'life-title' }, 'Lifecycle'),
          dl([
            ['State', h('span', {}, h('span', { id: 'db-state' }, stateBadge(d.state)), h('span', { class: 'hint' }, STATE_WORDS[d.state] || ''))],
            ['Writer', `${onOff(d.current_scale)} now, ${onOff(d.target_scale)} wanted`],
            ['Worker', h('span', { id: 'db-worker' }, d.worker_id || '—')],
            ['Backend address', d.backend_addr ? h('code', { id: 'db-backend' }, d.backend_addr) : '—'],
            ['Active connections', String(d.active_connections)],
            ['Writer term', d.writer_term == null ? '—' : String(d.writer_term)],
            ['Start/stop deadline', countdown(d.phase_deadline_at)],
            d.failure_reason ? ['Failure', h('span', { class: 'error' }, d.failure_reason)] : null,
            ['Size', d.size],
            ['Timeline', h('code', {}, d.timeline)],
            ['Database id', h('code', {}, d.db_id)],
            ['Created', when(d.created_at)],
          ])),
        h('section', { class: 'card', 'aria-labelledby': 'scale-title', id: 'autoscaler' },
          h('h2', { id: 'scale-title' }, 'Autoscaler'),
          dl([
            ['Profile', h('span', { id: 'db-profile' }, profileText(d))],
            ['Handoff', h('span', {}, h('span', { id: 'db-scale-state' }, scaleBadge(d.scale_state)), h('span', { class: 'hint' }, SCALE_WORDS[d.scale_state] || ''))],
            ['New connections', d.freeze_new_checkouts ? badge('waiting for the cutover', 'info') : 'admitted'],
            ['Candidate', d.candidate_profile || d.candidate_worker_id
              ? `${d.candidate_profile || '—'} on ${d.candidate_worker_id || '—'}, term ${d.candidate_writer_term ?? '—'}` : '—'],
            ['Phase started', when(d.scale_phase_started_at)],
            ['Phase deadline', countdown(d.scale_phase_deadline_at)],
            d.scale_failure_reason ? ['Handoff failure', h('span', { class: 'error', id: 'db-scale-failure' }, d.scale_failure_reason)] : null,
            ['Lease epoch', String(d.lease_control_epoch)],
            ['Cooldown until', countdown(d.autoscale_cooldown_until)],
            ['Scale', `${d.current_scale} now, ${d.target_scale} wanted`],
            ['Frozen checkouts', yesNo(d.freeze_new_checkouts)],
          ]))),
      this.storageCard(d),
      this.haCard(d),
      this.branchesCard(d, dbs),
      h('section', { class: 'card' }, h('details', {}, h('summary', {}, 'Describe as JSON'), h('pre', { class: 'mono' }, JSON.stringify(d, null, 2)))),
      this.dangerCard(d));
  }

  connectCard(d, creds) {
    const toggle = h('button', { type: 'button', class: 'quiet', 'aria-expanded': String(this.shown), 'data-fid': 'reveal', id: 'reveal' }, this.shown ? 'Hide password' : 'Reveal password');
    toggle.addEventListener('click', () => { this.shown = !this.shown; this.refresh(); });
    const dsn = creds ? creds.dsn_template.replace('<db-name>', enc(d.name)) : null;
    const pooled = creds ? creds.pooled_dsn_template.replace('<db-name>', enc(d.name)) : null;
    // The Neon serverless driver, pointed here: its two settings, and the connection string.
    const driver = creds ? [
      "import { neon, neonConfig } from '@neondatabase/serverless';",
      `neonConfig.fetchEndpoint = '${creds.http_sql_url}';`,
      `neonConfig.wsProxy = '${creds.websocket_url.replace(/^wss:\/\//, '')}';`,
      '// on Node: neonConfig.webSocketConstructor = (await import(\'ws\')).default;',
      `const sql = neon('${dsn}');`,
      'const rows = await sql`SELECT now()`;',
    ].join('\n') : null;
    return h('section', { class: 'card', 'aria-labelledby': 'connect-title' },
      h('h2', { id: 'connect-title' }, 'Connect'),
      h('p', { class: 'hint' }, 'The database starts on the first connection and stops after a while without any.'),
      dl([
        ['DSN', dsn ? h('span', { class: 'secret' }, h('code', { class: 'value', id: 'dsn' }, dsn), copyButton(dsn, 'the DSN', 'copy-dsn'))
          : h('code', { class: 'value' }, `postgres://…:••••@…/${d.name}?sslmode=require`)],
        ['psql', dsn ? h('span', { class: 'secret' }, h('code', { class: 'value' }, `psql "${dsn}"`), copyButton(`psql "${dsn}"`, 'the psql command', 'copy-psql')) : '—'],
        ['Pooled DSN', pooled ? h('span', { class: 'secret' }, h('code', { class: 'value', id: 'pooled-dsn' }, pooled), copyButton(pooled, 'the pooled DSN', 'copy-pooled-dsn'))
          : h('span', { class: 'hint' }, 'transaction pooling: thousands of short-lived clients share the database\'s pool')],
        ['Edge runtimes', driver ? h('span', { class: 'secret' }, h('pre', { class: 'mono value', id: 'driver-snippet' }, driver), copyButton(driver, 'the serverless driver snippet', 'copy-driver'))
          : h('span', { class: 'hint' }, 'SQL over HTTP and WebSockets (the Neon serverless driver): shown with the password')],
      ]),
      h('div', { class: 'actions' }, toggle));
  }

  // High availability: the writer and its standby, whether commits wait for it, failovers;
  // turning it on or off.
  haCard(d) {
    const STANDBY_WORDS = {
      none: 'no standby',
      building: 'being made from the repository',
      catching_up: 'replaying, connecting to the writer',
      streaming: 'streaming; the writer is told to wait for it',
      sync: 'synchronous: every commit waits for it',
    };
    const protection = !d.ha ? h('span', { id: 'db-ha-protected', class: 'hint' }, 'off: the repository keeps it, up to the archive timeout')
      : d.ha_protected ? h('span', { id: 'db-ha-protected' }, badge('protected', 'ok'), h('span', { class: 'hint' }, 'every acknowledged commit is on both workers'))
        : h('span', { id: 'db-ha-protected' }, badge('unprotected', 'warn'), ' ', d.ha_unprotected_reason || (d.state === 'running' ? '' : 'while it does not run'));
    const rows = [
      ['Protection', protection],
      ['Writer', h('span', { id: 'db-ha-writer' }, d.worker_id ? `${d.worker_id}, term ${d.writer_term}` : '—')],
      ['Standby', h('span', { id: 'db-standby' }, d.standby_worker_id ? `${d.standby_worker_id}, term ${d.standby_writer_term}` : '—',
        ' ', badge(d.standby_state, d.standby_state === 'sync' ? 'ok' : 'info'), h('span', { class: 'hint' }, STANDBY_WORDS[d.standby_state] || ''))],
      ['Replication lag', h('span', { id: 'db-replication-lag' }, d.replication_lag_bytes == null ? '—' : bytes(d.replication_lag_bytes))],
      ['Failovers', h('span', { id: 'db-failovers' }, String(d.failovers), d.last_failover_at ? [' (last ', when(d.last_failover_at), ')'] : '')],
    ];
    let toggle = null;
    if (can('can_create_db') && d.state !== 'deleting') {
      toggle = h('button', { type: 'button', class: d.ha ? 'quiet' : null, id: 'toggle-ha' }, d.ha ? 'Turn high availability off…' : 'Turn high availability on');
      toggle.addEventListener('click', () => {
        const set = (idem) => api('POST', `${dbPath(this.tenant, this.db)}/ha`, { enabled: !d.ha }, idem);
        this.act(d.ha ? {
          title: `Turn high availability off for ${this.db}?`,
          text: 'Commits stop waiting for the standby, and it is shut down: a lost worker then loses up to the archive timeout of commits.',
          confirm: 'Turn off',
        } : null, set);
      });
    }
    return h('section', { class: 'card', 'aria-labelledby': 'ha-title', id: 'ha' },
      h('h2', { id: 'ha-title' }, 'High availability'),
      dl(rows),
      h('div', { class: 'actions' }, toggle));
  }

  // What the storage repository holds of the database, and a restore to a point in it.
  storageCard(d) {
    const dbLink = (name) => (name ? h('a', { href: `#/tenants/${enc(this.tenant)}/dbs/${enc(name)}`, class: 'kept-db' }, name) : 'a database since deleted');
    const point = (r) => (r.at ? utc(r.at) : h('code', {}, r.lsn || 'the newest point'));
    let progress = null;
    if (d.restore) {
      const stage = d.worker_id ? `restoring on ${d.worker_id}` : 'waiting for a worker';
      progress = ['Restore', h('span', { id: 'db-restore' }, badge(stage, 'info'), ' to ', point(d.restore),
        '; the state before is kept as ', dbLink(d.restore.kept_db), '.')];
    }
    const last = d.last_restore ? ['Last restore', h('span', { id: 'db-last-restore' }, 'to ', point(d.last_restore),
      ', done ', when(d.last_restore.restored_at), '; the state before is kept as ', dbLink(d.last_restore.kept_db), '.')] : null;
    const history = d.history_start_at
      ? h('span', { id: 'db-history' }, utc(d.history_start_at), ' to ', utc(d.recoverable_until))
      : h('span', { id: 'db-history', class: 'hint' }, 'from its first backup, taken when it first starts');
    return h('section', { class: 'card', 'aria-labelledby': 'storage-title', id: 'storage' },
      h('h2', { id: 'storage-title' }, 'Storage and restore'),
      dl([
        ['In the repository', h('span', { id: 'db-storage-bytes' }, bytes(d.storage_bytes))],
        ['Last backup', h('span', { id: 'db-last-backup' }, when(d.last_backup_at))],
        ['History', history],
        d.storage_warning ? ['Warning', h('span', { class: 'error', id: 'db-storage-warning' }, d.storage_warning)] : null,
        progress,
        last,
      ]),
      this.restoreForm(d));
  }

  restoreForm(d) {
    if (!can('can_delete') || !d.history_start_at || ['deleting', 'restoring'].includes(d.state)) return null;
    // The time typed survives the renders live changes cause.
    const at = h('input', {
      // No min or max: the API judges the point (a running database's newest point moves
      // on between renders), and says why one is refused.
      type: 'datetime-local', step: '1', id: 'restore-at', 'data-field': 'at',
      value: this.restoreAt || utcInput(d.recoverable_until),
    });
    at.addEventListener('input', () => { this.restoreAt = at.value; });
    const button = h('button', { type: 'submit', class: 'danger', id: 'restore-db' }, 'Restore…');
    const form = h('form', { class: 'row', 'aria-label': 'Restore to a point in time' },
      field('Point in time (UTC)', at, 'inside the history above'), button);
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      if (!at.value) { this.error = 'Pick the point in time to restore to.'; this.refresh(); return; }
      const iso = `${at.value.length === 16 ? `${at.value}:00` : at.value}Z`;
      this.act({
        title: `Restore ${this.db} to ${iso}?`,
        text: 'Its open connections are closed and new ones wait until it serves the restored state. '
          + 'The name, DSN and database id stay; the state it has now is kept as a new database.',
        confirm: 'Restore', danger: true, typed: this.db,
      }, async (idem) => {
        await api('POST', `${dbPath(this.tenant, this.db)}/restore`, { at: iso }, idem);
        this.restoreAt = null;
      });
    });
    return form;
  }

  // What the database is a branch of, its own branches, a new branch (now or at a point of
  // its history), and a branch's reset to its parent's data.
  branchesCard(d, dbs) {
    const link = (x) => h('a', { href: `#/tenants/${enc(this.tenant)}/dbs/${enc(x.name)}`, class: 'branch-link' }, x.name);
    const parent = d.parent_db_id ? dbs.find((x) => x.db_id === d.parent_db_id) : null;
    const own = dbs.filter((x) => x.parent_db_id === d.db_id);
    const rows = [
      d.parent_db_id ? ['Branch of', h('span', { id: 'db-parent' }, parent ? link(parent) : 'a database since deleted',
        ' as of ', utc(d.parent_at), d.branch_made ? '' : h('span', { class: 'hint' }, ' (being made)'))] : null,
      ['Branches', own.length ? h('span', { id: 'db-branches' }, ...own.flatMap((x, i) => [i ? ', ' : '', link(x), ' ', stateBadge(x.state)]))
        : h('span', { id: 'db-branches', class: 'hint' }, 'none')],
    ];
    return h('section', { class: 'card', 'aria-labelledby': 'branches-title', id: 'branches' },
      h('h2', { id: 'branches-title' }, 'Branches'),
      dl(rows),
      this.branchForm(d),
      h('div', { class: 'actions' }, this.diffButton(d, parent), this.resetButton(d, parent)),
      this.schemaDiff && this.schemaDiff.against === (parent && parent.name) ? this.diffView(this.schemaDiff) : null);
  }

  // The branch's schema against its parent's: what a migration made on it changes.
  diffButton(d, parent) {
    if (!parent) return null;
    const button = h('button', { type: 'button', class: 'quiet', id: 'schema-diff' }, `Compare schema with ${parent.name}`);
    button.addEventListener('click', async () => {
      button.disabled = true;
      try {
        this.schemaDiff = (await api('GET', `${dbPath(this.tenant, this.db)}/schema-diff?against=${enc(parent.name)}`)).data;
      } catch (err) {
        this.error = errorText(err);
      }
      this.refresh();
    });
    return button;
  }

  diffView(r) {
    if (r.identical) return h('p', { id: 'schema-diff-out', class: 'hint' }, `The same schema as ${r.against}.`);
    return h('pre', { id: 'schema-diff-out', class: 'mono diff' },
      ...r.diff.split('\n').map((line) => h('span', {
        class: line.startsWith('+') && !line.startsWith('+++') ? 'add' : line.startsWith('-') && !line.startsWith('---') ? 'del' : null,
      }, `${line}\n`)));
  }

  branchForm(d) {
    if (!can('can_create_db') || ['deleting', 'failed'].includes(d.state)) return null;
    // What is typed survives the renders live changes cause.
    const name = h('input', { type: 'text', id: 'branch-name', 'data-field': 'name', autocomplete: 'off', required: true, value: this.branchName || '' });
    name.addEventListener('input', () => { this.branchName = name.value; });
    const at = h('input', {
      type: 'datetime-local', step: '1', id: 'branch-at', 'data-field': 'at',
      value: this.branchAt || '',
    });
    at.addEventListener('input', () => { this.branchAt = at.value; });
    const form = h('form', { class: 'row', 'aria-label': 'New branch' },
      field('Branch name', name),
      d.history_start_at ? field('As of (UTC)', at, 'empty: now') : null,
      h('button', { type: 'submit', id: 'branch-db' }, 'Create branch'));
    return mutation(form, async (idem) => {
      const body = { name: name.value.trim(), size: d.size, parent: this.db };
      if (at.value) body.at = `${at.value.length === 16 ? `${at.value}:00` : at.value}Z`;
      await api('POST', `${tenantPath(this.tenant)}/dbs`, body, idem);
      this.branchName = null;
      this.branchAt = null;
      location.hash = `#/tenants/${enc(this.tenant)}/dbs/${enc(body.name)}`;
    });
  }

  resetButton(d, parent) {
    if (!can('can_delete') || !parent || !['running', 'stopped'].includes(d.state)) return null;
    const button = h('button', { type: 'button', class: 'danger', id: 'reset-branch' }, `Reset to ${parent.name}…`);
    button.addEventListener('click', () => { this.schemaDiff = null; });
    button.addEventListener('click', () => this.act({
      title: `Reset ${this.db} to ${parent.name}?`,
      text: `It takes ${parent.name}'s data as it is now. Its open connections are closed; the name, DSN and database id stay; `
        + 'the state it has now is kept as a new database.',
      confirm: 'Reset', danger: true, typed: this.db,
    }, (idem) => api('POST', `${dbPath(this.tenant, this.db)}/reset`, {}, idem)));
    return button;
  }

  dangerCard(d) {
    if (!can('can_delete') || d.state === 'deleting') return null;
    const button = h('button', { type: 'button', class: 'danger', id: 'delete-db', 'data-fid': 'delete-db' }, 'Delete database…');
    button.addEventListener('click', () => this.act({
      title: `Delete database ${this.db}?`,
      text: 'The database and its data are deleted. Open connections are closed.',
      confirm: 'Delete database', danger: true, typed: this.db,
    }, (idem) => api('DELETE', dbPath(this.tenant, this.db), undefined, idem)));
    return h('section', { class: 'card', 'aria-labelledby': 'danger-title' }, h('h2', { id: 'danger-title' }, 'Delete'), h('div', { class: 'actions' }, button));
  }
}

// ----- API keys

class KeysView extends View {
  constructor() { super('keys', 'API keys'); this.once = null; }

  top() {
    if (isTenantKey()) return [];
    this.account = isOperator() ? h('select', { id: 'keys-account' }) : null;
    const out = [];
    if (this.account) {
      accountOptions(this.account).then(() => this.refresh()).catch(() => {});
      this.account.addEventListener('change', () => this.refresh());
      out.push(h('div', { class: 'card' }, field('Account', this.account)));
    }
    const name = h('input', { type: 'text', id: 'key-name', 'data-field': 'name', autocomplete: 'off' });
    const scope = h('select', { id: 'key-scope', 'data-field': 'scope' },
      isOperator() ? h('option', { value: 'global' }, 'global: everything') : null,
      h('option', { value: 'account' }, 'account: the whole account'),
      h('option', { value: 'tenant', selected: true }, 'tenant: one tenant'));
    this.tenantSelect = h('select', { id: 'key-tenant', 'data-field': 'tenant' });
    const tenantField = field('Tenant', this.tenantSelect);
    scope.addEventListener('change', () => { tenantField.hidden = scope.value !== 'tenant'; });
    const flags = ['can_create_tenant', 'can_create_db', 'can_scale', 'can_delete'].map((p) => {
      const held = can(p);
      return h('label', { class: 'check' }, h('input', { type: 'checkbox', value: p, disabled: held ? null : true, 'data-perm': p }), p, held ? null : h('span', { class: 'hint' }, '(this key lacks it)'));
    });
    const expires = h('input', { type: 'datetime-local', id: 'key-expires', 'data-field': 'expires_at' });
    const form = h('form', { class: 'stack', 'aria-label': 'Issue a key' },
      field('Name', name, 'optional, to recognise the key later'),
      field('Scope', scope), tenantField,
      h('fieldset', {}, h('legend', {}, 'Permissions (reading needs none)'), flags),
      field('Expires', expires, 'optional; your local time'),
      h('button', { type: 'submit', id: 'issue-key' }, 'Issue key'));
    mutation(form, async (idem) => {
      const body = { scope: scope.value, permissions: {} };
      if (scope.value === 'tenant') body.tenant = this.tenantSelect.value;
      if (name.value.trim()) body.name = name.value.trim();
      if (expires.value) body.expires_at = new Date(expires.value).toISOString();
      for (const box of form.querySelectorAll('[data-perm]')) if (box.checked) body.permissions[box.value] = true;
      const r = await api('POST', `/v2/accounts/${enc(this.accountId())}/api-keys`, body, idem);
      this.once = { title: `New key ${r.data.key_id}`, token: r.data.token };
      form.reset();
      tenantField.hidden = false;
      this.refresh();
    });
    out.push(h('section', { class: 'card' }, h('h2', {}, 'Issue a key'), form));
    return out;
  }

  accountId() {
    return this.account ? this.account.value : session.key.account_id;
  }

  async load() {
    const me = (await api('GET', '/v2/api-keys/me')).data;
    session.key = me;
    const account = this.accountId();
    let keys = [];
    if (!isTenantKey() && account) {
      keys = await all(`/v2/accounts/${enc(account)}/api-keys`);
      const tenants = (await all('/v2/tenants')).filter((t) => t.account_id === account);
      const before = this.tenantSelect.value;
      this.tenantSelect.replaceChildren(...tenants.map((t) => h('option', { value: t.tenant }, t.tenant)));
      if (before) this.tenantSelect.value = before;
    }
    const rotate = h('button', { type: 'button', class: 'quiet', id: 'rotate-key', 'data-fid': 'rotate' }, 'Rotate this key…');
    rotate.addEventListener('click', () => this.rotate());
    const now = Date.now();
    renderInto(this.body,
      this.once ? onceCard(this.once.title, this.once.token) : null,
      h('section', { class: 'card', 'aria-labelledby': 'me-title' },
        h('h2', { id: 'me-title' }, 'This key'),
        dl([
          ['Key id', h('code', {}, me.key_id)], ['Name', me.name || '—'], ['Scope', me.scope + (me.tenant ? ` (${me.tenant})` : '')],
          ['Permissions', perms(me.permissions)], ['Expires', countdown(me.expires_at)], ['Created', when(me.created_at)],
        ]),
        h('div', { class: 'actions' }, rotate)),
      isTenantKey() ? h('p', { class: 'hint' }, 'A tenant key sees only itself; an account key manages the account’s keys.') :
        h('section', { class: 'card', 'aria-labelledby': 'keys-title' },
          h('h2', { id: 'keys-title' }, `Keys of the account (${keys.length})`),
          table(['Key id', 'Name', 'Scope', 'Permissions', 'Expires', 'Created', 'Status', 'Action'],
            keys.map((k) => {
              const expired = k.expires_at && Date.parse(k.expires_at) <= now;
              const status = k.revoked_at ? badge('revoked', 'bad') : expired ? badge('expired', 'warn') : badge('active', 'ok');
              let action = '—';
              if (!k.revoked_at) {
                action = h('button', { type: 'button', class: 'quiet small', 'data-fid': `revoke-${k.key_id}`, 'aria-label': `Revoke key ${k.key_id}` }, k.key_id === me.key_id ? 'Revoke (logs out)' : 'Revoke…');
                action.addEventListener('click', () => this.revoke(k, k.key_id === me.key_id));
              }
              return h('tr', { 'data-key': k.key_id },
                h('td', {}, h('code', {}, k.key_id), k.key_id === me.key_id ? h('span', { class: 'hint' }, 'this key') : null),
                h('td', {}, k.name || '—'), h('td', {}, k.scope + (k.tenant ? ` (${k.tenant})` : '')), h('td', {}, perms(k.permissions)),
                h('td', {}, when(k.expires_at)), h('td', {}, when(k.created_at)), h('td', {}, status), h('td', {}, action));
            }),
            'No keys.')),
      this.errorLine());
  }

  revoke(k, own) {
    return this.act({
      title: `Revoke key ${k.key_id}?`,
      text: own ? 'This is the key you are logged in with: the Console logs out.' : 'Whatever uses it gets 401 from now on.',
      confirm: 'Revoke', danger: true,
    }, async (idem) => {
      await api('POST', '/v2/api-keys/revoke', { key_id: k.key_id }, idem);
      if (own) logout('The key was revoked; log in with another one.');
    });
  }

  rotate() {
    return this.act({
      title: 'Rotate this key?',
      text: 'The key gets a new secret; the current token stops working at once, everywhere it is used. The Console switches to the new token.',
      confirm: 'Rotate', danger: true,
    }, async (idem) => {
      session.rotating = true;
      try {
        const r = await api('POST', '/v2/api-keys/rotate', {}, idem);
        session.token = r.data.token;
        sessionStorage.setItem(TOKEN_KEY, session.token);
        this.once = { title: 'The new token of this key', token: r.data.token };
      } finally {
        session.rotating = false;
        // Reads held back during the rotation are made by the refresh that follows.
        this.again = false;
      }
    });
  }
}

// ----- billing

function barChart(title, entries) {
  const max = Math.max(1e-9, ...entries.map((e) => e.value));
  const row = 26;
  const width = 640;
  const labelW = 170;
  const height = Math.max(row, entries.length * row) + 6;
  const summary = entries.map((e) => `${e.label} ${seconds(e.value)}`).join(', ');
  return s('svg', { class: 'chart', viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': `${title}: ${summary || 'nothing used'}` },
    entries.map((e, i) => {
      const w = Math.max(1, ((width - labelW - 90) * e.value) / max);
      const y = i * row + 4;
      return s('g', {},
        s('text', { x: 0, y: y + 15 }, e.label.length > 24 ? `${e.label.slice(0, 23)}…` : e.label),
        s('rect', { class: 'bar', x: labelW, y, width: w, height: row - 8, rx: 3 }),
        s('text', { x: labelW + w + 6, y: y + 15 }, seconds(e.value)));
    }));
}

class BillingView extends View {
  constructor() { super('billing', 'Billing'); }

  top() {
    this.account = isOperator() ? h('select', { id: 'billing-account' }) : null;
    if (this.account) {
      accountOptions(this.account).then(() => this.refresh()).catch(() => {});
      this.account.addEventListener('change', () => this.refresh());
    }
    this.period = h('input', { type: 'month', id: 'billing-period' });
    this.period.addEventListener('change', () => this.refresh());
    return [h('div', { class: 'card' }, h('form', { class: 'row', 'aria-label': 'Billing period' },
      this.account ? field('Account', this.account) : null,
      field('Month', this.period, 'UTC; empty for the current one')))];
  }

  async load() {
    const q = new URLSearchParams();
    if (this.account) {
      if (!this.account.value) return;
      q.set('account', this.account.value);
    }
    if (this.period.value) q.set('period', this.period.value);
    const b = (await api('GET', `/v2/billing/summary${q.size ? `?${q}` : ''}`)).data;
    const profiles = Object.entries(b.by_profile).map(([label, value]) => ({ label, value }));
    const dbs = b.databases.map((d) => ({ label: `${d.tenant}/${d.name}`, value: d.compute_seconds, d }));
    renderInto(this.body,
      h('section', { class: 'card', 'aria-labelledby': 'bill-title' },
        h('h2', { id: 'bill-title' }, `${b.period}: ${seconds(b.compute_seconds)} of compute, ${b.storage_gib_hours.toFixed(3)} GiB-hours of storage`),
        h('p', { class: 'hint' }, 'Counted while a writer serves a database, per compute profile, up to ', when(b.as_of), '.')),
      h('div', { class: 'grid' },
        h('section', { class: 'card', 'aria-labelledby': 'by-profile' },
          h('h2', { id: 'by-profile' }, 'By profile'),
          profiles.length ? barChart('Compute seconds by profile', profiles) : null,
          table(['Profile', { label: 'Compute seconds', num: true }],
            profiles.map((p) => h('tr', {}, h('td', {}, p.label), h('td', { class: 'num' }, seconds(p.value)))), 'Nothing used in this period.')),
        h('section', { class: 'card', 'aria-labelledby': 'by-db' },
          h('h2', { id: 'by-db' }, 'By database'),
          dbs.length ? barChart('Compute seconds by database', dbs) : null,
          table(['Database', { label: 'Compute seconds', num: true }, { label: 'Storage GiB-hours', num: true }, 'By profile', 'Now'],
            dbs.map(({ d }) => h('tr', {},
              h('td', {}, `${d.tenant}/${d.name}`), h('td', { class: 'num' }, seconds(d.compute_seconds)),
              h('td', { class: 'num' }, d.storage_gib_hours.toFixed(3)),
              h('td', {}, Object.entries(d.by_profile).map(([p, v]) => `${p} ${seconds(v)}`).join(', ') || '—'),
              h('td', {}, d.running ? badge('running', 'ok') : '—'))), 'No database used compute in this period.'))));
  }
}

// ----- audit log

const TIMELINE_MAX = 1000;

// How an event stands out on the timeline: failures and losses of protection first.
function eventTone(type) {
  if (type.endsWith('failed')) return 'bad';
  if (['db.failover_started', 'db.standby_lost', 'db.unprotected', 'worker.lost'].includes(type)) return 'warn';
  if (['db.promoted', 'db.replication_set'].includes(type)) return 'ok';
  return 'info';
}

class EventsView extends View {
  constructor(query) {
    super('events', 'Audit log');
    this.query = new URLSearchParams(query || '');
    this.count = 0;
  }

  top() {
    const q = this.query;
    const tenant = h('input', { type: 'text', id: 'filter-tenant', value: q.get('tenant') || '', autocomplete: 'off', list: 'filter-tenants' });
    this.tenantList = h('datalist', { id: 'filter-tenants' });
    const db = h('input', { type: 'text', id: 'filter-db', value: q.get('db') || '', autocomplete: 'off', spellcheck: 'false' });
    const chosen = new Set((q.get('types') || '').split(',').filter(Boolean));
    const types = h('select', { id: 'filter-types', multiple: true, size: 6 },
      EVENT_TYPES.map((t) => h('option', { value: t, selected: chosen.has(t) || null }, t)));
    const since = h('input', { type: 'text', inputmode: 'numeric', id: 'filter-since', value: q.get('since') || '', autocomplete: 'off' });
    const form = h('form', { class: 'row', 'aria-label': 'Filter the audit log' },
      field('Tenant', tenant), this.tenantList, field('Database id', db, 'db_id'),
      field('Types', types, 'none chosen: every type'), field('After event #', since, 'empty: the last 200'),
      h('button', { type: 'submit', id: 'apply-filters' }, 'Show'));
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      const next = new URLSearchParams();
      if (tenant.value.trim()) next.set('tenant', tenant.value.trim());
      if (db.value.trim()) next.set('db', db.value.trim());
      const picked = Array.from(types.selectedOptions, (o) => o.value);
      if (picked.length) next.set('types', picked.join(','));
      if (since.value.trim()) next.set('since', since.value.trim());
      location.hash = `#/events${next.size ? `?${next}` : ''}`;
    });
    this.status = h('p', { class: 'hint', role: 'status', id: 'timeline-status' }, 'Connecting…');
    this.list = h('ol', { class: 'timeline', id: 'timeline', 'aria-label': 'Events, newest first' });
    return [h('section', { class: 'card' }, form), h('section', { class: 'card' }, this.status, this.list)];
  }

  changed() {}

  async load() {
    all('/v2/tenants').then((ts) => this.tenantList.replaceChildren(...ts.map((t) => h('option', { value: t.tenant })))).catch(() => {});
    if (this.stream) return;
    const head = (await api('GET', '/v2/api-keys/me')).version;
    const from = this.query.has('since') ? Number(this.query.get('since')) : Math.max(0, head - 200);
    const filters = {};
    for (const k of ['tenant', 'db', 'types']) if (this.query.get(k)) filters[k] = this.query.get(k);
    this.from = Number.isFinite(from) ? Math.min(from, head) : 0;
    if (Object.keys(filters).length && !(await this.filtersTaken(filters))) return;
    this.stream = follow(filters, this.from, (env) => this.add(env), (state, text) => {
      this.status.textContent = state === 'live'
        ? `Following events after #${this.from} (${this.count} shown).`
        : `${text} Resumes after event #${this.stream ? this.stream.last : this.from}.`;
    });
  }

  // An EventSource cannot read why a stream was refused: ask once with a plain request,
  // so a bad filter gets the API's message instead of endless reconnecting.
  async filtersTaken(filters) {
    const ctl = new AbortController();
    try {
      const res = await fetch(`/v2/events?${new URLSearchParams({ ...filters, since: String(this.from) })}`, {
        headers: { Authorization: `Bearer ${session.token}` }, signal: ctl.signal, cache: 'no-store',
      });
      if (res.ok) {
        ctl.abort();
        return true;
      }
      const body = await res.json().catch(() => null);
      this.status.textContent = `This filter is refused: ${errorText(new ApiError(res.status, body))}`;
      this.status.setAttribute('role', 'alert');
      return false;
    } catch {
      return true;
    }
  }

  add(env) {
    this.count++;
    const item = h('li', { 'data-seq': env.seq, 'data-type': env.type },
      h('div', { class: 'meta' },
        h('span', { class: 'mono' }, `#${env.seq}`), when(env.at), badge(env.type, eventTone(env.type)),
        env.tenant ? h('span', {}, `tenant ${env.tenant}`) : null,
        env.db_id ? h('span', { class: 'mono' }, `db ${env.db_id.slice(0, 8)}`) : null,
        h('span', { class: 'hint' }, `by ${env.actor}`)),
      h('details', {}, h('summary', {}, 'JSON'), h('pre', {}, JSON.stringify(env, null, 2))));
    this.list.prepend(item);
    while (this.list.childElementCount > TIMELINE_MAX) this.list.lastElementChild.remove();
    this.status.textContent = `Following events after #${this.from} (${this.count} shown).`;
  }

  leave() { if (this.stream) this.stream.close(); }
}

// ---------------------------------------------------------------------------------------
// Router

const ROUTES = [
  [/^#\/accounts$/, () => (isOperator() ? new AccountsView() : null)],
  [/^#\/tenants$/, () => new TenantsView()],
  [/^#\/tenants\/([^/?]+)$/, (m) => new TenantView(decodeURIComponent(m[1]))],
  [/^#\/tenants\/([^/?]+)\/dbs\/([^/?]+)$/, (m) => new DbView(decodeURIComponent(m[1]), decodeURIComponent(m[2]))],
  [/^#\/keys$/, () => new KeysView()],
  [/^#\/billing$/, () => new BillingView()],
  [/^#\/events(?:\?(.*))?$/, (m) => new EventsView(m[1])],
];

function navigate() {
  const hash = location.hash;
  if (hash && !hash.startsWith('#/')) {
    // In-page anchors (the skip link) are not routes.
    $('#main').focus();
    return;
  }
  if (!session.key) return;
  let view = null;
  for (const [re, make] of ROUTES) {
    const m = re.exec(hash);
    if (m) { view = make(m); break; }
  }
  if (!view) {
    location.replace('#/tenants');
    return;
  }
  if (current) current.leave();
  current = view;
  view.mount($('#main'));
  document.title = `${view.title} · SPG99 Console`;
  for (const a of document.querySelectorAll('[data-nav]')) {
    if (a.dataset.nav === view.nav) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  view.h1.focus();
  view.refresh();
}

// ---------------------------------------------------------------------------------------
// Login and logout

const LOGIN_WORDS = {
  missing_token: 'Enter the token of an API key.',
  invalid_token: 'This token is not valid. Check that you copied all of it: it starts with spg99_.',
  token_expired: 'This token has expired. Ask for a new key.',
  token_revoked: 'This token was revoked. Ask for a new key.',
};

function showLogin(message) {
  if (current) current.leave();
  current = null;
  $('#nav').hidden = true;
  $('#logout').hidden = true;
  $('#who').textContent = '';
  setLive('off', 'Offline');
  document.title = 'Log in · SPG99 Console';
  const email = h('input', { type: 'email', id: 'login-email', autocomplete: 'username', value: sessionStorage.getItem(EMAIL_KEY) || '' });
  // No `name`: were the script ever not to run, a plain form submission would carry nothing.
  const token = h('input', { type: 'password', id: 'login-token', autocomplete: 'current-password', spellcheck: 'false' });
  const error = h('p', { class: 'error', role: 'alert', id: 'login-error' }, message || '');
  const button = h('button', { type: 'submit', id: 'login-submit' }, 'Log in');
  const form = h('form', { class: 'stack', 'aria-labelledby': 'login-title' },
    field('Email', email, 'the contact email of your account'),
    field('API token', token, 'spg99_…; a global key opens the operator view, without an email'),
    button, error);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    button.disabled = true;
    error.textContent = '';
    try {
      await login(email.value.trim(), token.value.trim());
    } catch (err) {
      error.textContent = err.message;
      token.focus();
    } finally {
      button.disabled = false;
    }
  });
  $('#main').replaceChildren(h('section', { class: 'card login' }, h('h1', { id: 'login-title' }, 'Log in to the SPG99 Console'), form));
  (email.value ? token : email).focus();
}

// Checks the token (and, for account and tenant keys, that the email is the account's
// contact), then opens the Console.
async function login(email, token) {
  if (!token) throw new Error(LOGIN_WORDS.missing_token);
  session.token = token;
  session.key = null;
  try {
    const me = await api('GET', '/v2/api-keys/me');
    let account = null;
    if (me.data.scope !== 'global') {
      if (!email) throw new Error('Enter the email address of your account.');
      account = (await api('GET', '/v2/account/profile')).data;
      if (!account.email) throw new Error('This account has no contact email yet: save one (POST /v2/account/contact), then log in.');
      if (account.email.toLowerCase() !== email.toLowerCase()) throw new Error('This token does not belong to the account of that email address.');
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    sessionStorage.setItem(EMAIL_KEY, email);
    enter(me, account, email);
  } catch (err) {
    session.token = null;
    session.key = null;
    if (err instanceof ApiError) {
      if (err.status === 401) throw new Error(LOGIN_WORDS[err.code] || err.message);
      if (err.status === 0) throw new Error('The server cannot be reached. Try again in a moment.');
    }
    throw err;
  }
}

function enter(me, account, email) {
  session.key = me.data;
  session.account = account;
  session.email = email;
  $('#nav').hidden = false;
  $('#logout').hidden = false;
  for (const a of document.querySelectorAll('[data-operator]')) a.hidden = !isOperator();
  $('#who').textContent = isOperator() ? 'Operator (global key)'
    : `${account.name} · ${account.email}${isTenantKey() ? ` · tenant ${me.data.tenant}` : ''}`;
  startLive(me.version);
  if (!location.hash.startsWith('#/')) location.replace(isOperator() ? '#/accounts' : '#/tenants');
  navigate();
}

function logout(message) {
  if (live.stream) live.stream.close();
  live.stream = null;
  sessionStorage.removeItem(TOKEN_KEY);
  session.token = null;
  session.key = null;
  session.account = null;
  showLogin(message);
}

// ---------------------------------------------------------------------------------------
// Start

function showFault(text) {
  const banner = $('#banner');
  banner.textContent = `The Console hit an error: ${text}. Reloading the page usually helps.`;
  banner.hidden = false;
}

window.addEventListener('error', (e) => showFault(e.message || 'unknown error'));
window.addEventListener('unhandledrejection', (e) => showFault(String(e.reason && e.reason.message || e.reason)));

document.addEventListener('DOMContentLoaded', () => {
  $('#logout').addEventListener('click', () => logout('You are logged out.'));
  window.addEventListener('hashchange', navigate);
  setInterval(tick, 1000);
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (!token) return showLogin();
  login(sessionStorage.getItem(EMAIL_KEY) || '', token).catch((err) => showLogin(err.message));
});
