"""Many concurrent asyncpg clients, each with its own connection, running prepared
statements inside transactions through the pooler. Prints one JSON line:
{"ok": n, "failed": n, "errors": [...], "rows": n}.

usage: asyncpg_clients.py DSN CLIENTS TRANSACTIONS_EACH
"""
import asyncio
import json
import resource
import sys

import asyncpg

dsn, clients, each = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def client(i, errors, connects, everyone):
    """Connects (a few at a time: the handshakes are this one process's CPU), waits until every
    client is connected, then runs its transactions."""
    try:
        async with connects:
            conn = await asyncpg.connect(dsn, timeout=120)
    except Exception as e:  # noqa: BLE001 - reported
        errors.append(f"connect: {type(e).__name__}: {e}")
        await everyone.wait()
        return 0
    await everyone.wait()
    done = 0
    try:
        insert = await conn.prepare("INSERT INTO pooled (client, n) VALUES ($1, $2)")
        count = await conn.prepare("SELECT count(*) FROM pooled WHERE client = $1")
        for n in range(each):
            async with conn.transaction():
                await insert.fetch(i, n)
                seen = await count.fetchval(i)
                if seen != n + 1:
                    raise AssertionError(f"client {i} saw {seen} rows after {n + 1}")
            done += 1
    except Exception as e:  # noqa: BLE001 - reported
        errors.append(f"client {i}: {type(e).__name__}: {e}")
    finally:
        await conn.close()
    return done


class Barrier:
    def __init__(self, n):
        self.n, self.event = n, asyncio.Event()

    async def wait(self):
        self.n -= 1
        if self.n == 0:
            self.event.set()
        await self.event.wait()


async def main():
    errors = []
    setup = await asyncpg.connect(dsn)
    await setup.execute(
        "CREATE TABLE IF NOT EXISTS pooled (client int, n int, PRIMARY KEY (client, n))"
    )
    await setup.close()
    connects, everyone = asyncio.Semaphore(32), Barrier(clients)
    done = await asyncio.gather(*(client(i, errors, connects, everyone) for i in range(clients)))
    check = await asyncpg.connect(dsn)
    rows = await check.fetchval("SELECT count(*) FROM pooled")
    await check.close()
    print(json.dumps({"ok": sum(done), "failed": len(errors), "errors": errors[:5], "rows": rows}))


asyncio.run(main())
