"""PostgreSQL clients written out by hand (TLS, SCRAM-SHA-256), for what no driver does: hold
thousands of authenticated connections from one process (the password's PBKDF2 done once,
not per connection), and send the Gateway bytes no driver would.

usage:
  raw_clients.py idle DSN N      N idle connections held; then one busy client runs 200
                                 queries; prints {"idle": n, "busy": n}; with --hold, waits for
                                 a line on stdin before closing them (a benchmark's RSS reading)
  raw_clients.py garbage DSN     after authenticating, a message of a type no client sends, and
                                 one with a length of 2 GB: prints what came back for each
"""
import asyncio
import base64
import hashlib
import hmac
import json
import os
import resource
import ssl
import struct
import sys
import urllib.parse

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

SALTED = {}
# One context for every connection (making one loads the system's authorities).
TLS = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
TLS.check_hostname, TLS.verify_mode = False, ssl.CERT_NONE


def parse(dsn):
    u = urllib.parse.urlparse(dsn)
    return u.hostname, u.port, urllib.parse.unquote(u.username), urllib.parse.unquote(u.password), u.path.lstrip("/")


def msg(tag, body):
    return tag + struct.pack("!I", len(body) + 4) + body


async def read(r):
    tag = await r.readexactly(1)
    (n,) = struct.unpack("!I", await r.readexactly(4))
    return tag, await r.readexactly(n - 4)


def error_fields(body):
    return {f[:1].decode(): f[1:].decode() for f in body.split(b"\0") if f}


async def connect(dsn):
    host, port, user, password, db = parse(dsn)
    r, w = await asyncio.open_connection(host, port)
    w.write(struct.pack("!II", 8, 80877103))
    await w.drain()
    assert await r.readexactly(1) == b"S"
    await w.start_tls(TLS)
    params = b"user\0" + user.encode() + b"\0database\0" + db.encode() + b"\0\0"
    w.write(struct.pack("!II", len(params) + 8, 196608) + params)
    await w.drain()
    tag, body = await read(r)
    assert tag == b"R" and struct.unpack("!I", body[:4])[0] == 10, (tag, body)
    nonce = base64.b64encode(os.urandom(18)).decode()
    first_bare = f"n=,r={nonce}"
    first = ("n,," + first_bare).encode()
    w.write(msg(b"p", b"SCRAM-SHA-256\0" + struct.pack("!I", len(first)) + first))
    await w.drain()
    tag, body = await read(r)
    assert tag == b"R", (tag, body)
    server_first = body[4:].decode()
    attrs = dict(kv.split("=", 1) for kv in server_first.split(","))
    salt, iters = base64.b64decode(attrs["s"]), int(attrs["i"])
    key = (salt, iters)
    if key not in SALTED:
        SALTED[key] = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iters)
    salted = SALTED[key]
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored = hashlib.sha256(client_key).digest()
    final_bare = f"c=biws,r={attrs['r']}"
    auth = f"{first_bare},{server_first},{final_bare}".encode()
    sig = hmac.digest(stored, auth, "sha256")
    proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, sig))).decode()
    w.write(msg(b"p", f"{final_bare},p={proof}".encode()))
    await w.drain()
    while True:
        tag, body = await read(r)
        if tag == b"E":
            raise RuntimeError(error_fields(body))
        if tag == b"Z":
            return r, w


async def query(r, w, sql):
    w.write(msg(b"Q", sql.encode() + b"\0"))
    await w.drain()
    rows = []
    while True:
        tag, body = await read(r)
        if tag == b"D":
            (n,) = struct.unpack("!H", body[:2])
            (ln,) = struct.unpack("!i", body[2:6])
            rows.append(body[6 : 6 + ln].decode())
        elif tag == b"E":
            raise RuntimeError(error_fields(body))
        elif tag == b"Z":
            return rows


async def idle(dsn, n, hold):
    gate = asyncio.Semaphore(64)
    held, errors = [], []

    async def one():
        async with gate:
            try:
                held.append(await connect(dsn))
            except Exception as e:  # noqa: BLE001 - reported
                errors.append(repr(e))

    await asyncio.gather(*(one() for _ in range(n)))
    r, w = await connect(dsn)
    busy = 0
    for i in range(200):
        if await query(r, w, f"SELECT {i} + 1") == [str(i + 1)]:
            busy += 1
    print(json.dumps({"idle": len(held), "busy": busy, "errors": errors[:5]}), flush=True)
    if hold:
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    for _, hw in held + [(r, w)]:
        hw.close()


async def garbage(dsn):
    out = {}
    for name, junk in [("unknown type", msg(b"@", b"junk")), ("2 GB", b"Q" + struct.pack("!I", 2**31))]:
        r, w = await connect(dsn)
        w.write(junk)
        await w.drain()
        try:
            tag, body = await read(r)
            out[name] = error_fields(body) if tag == b"E" else tag.decode()
            out[name + " then"] = "closed" if await r.read(1) == b"" else "open"
        except (asyncio.IncompleteReadError, ConnectionError):
            out[name] = "closed"
    print(json.dumps(out))


if sys.argv[1] == "idle":
    asyncio.run(idle(sys.argv[2], int(sys.argv[3]), "--hold" in sys.argv))
else:
    asyncio.run(garbage(sys.argv[2]))
