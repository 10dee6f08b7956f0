import { afterEach, describe, expect, test } from "bun:test";
import { createDb } from "../../db/index.ts";
import { createTestDatabase, dbTargets, type OpenTestDb, openFreshDb } from "../../devkit/db.ts";
import { startTcpForwarder } from "../../devkit/fleet.ts";
import { metric } from "../../devkit/metrics.ts";
import { eventually } from "../../devkit/net.ts";
import { createApp as createRouterApp } from "../../router/app.ts";
import { type TestManager, testManager } from "./helpers.ts";

/**
 * `GET /health` reports the database: ok, or degraded with the reason once `select 1` fails,
 * and still 200, so that a liveness check does not restart a manager that keeps serving
 * from its route snapshot. The outage is real: a closed embedded database, or Postgres
 * reached through a loopback TCP forwarder that is then shut.
 */

type Health = {
  status: string;
  database: string;
  database_status: string;
  reason?: string;
  checked_at: string;
  routes_version: string | null;
};

const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup().catch(() => {});
});

/** A migrated database the test can take away: PGlite it closes, Postgres behind a forwarder. */
async function breakableDb(target: (typeof dbTargets)[number]) {
  if (target === "pglite") {
    const db = await openFreshDb("pglite");
    return { db, cut: () => db.close() };
  }
  const database = await createTestDatabase("postgres");
  cleanups.push(() => database.destroy());
  const server = new URL(database.env.DATABASE_URL ?? "");
  const forwarder = await startTcpForwarder(Number(server.port || 5432));
  const url = new URL(server);
  url.hostname = "127.0.0.1";
  url.port = String(forwarder.port);
  const handle = await createDb({ url: url.toString(), connectTimeoutS: 2 });
  await handle.migrate();
  const db: OpenTestDb = Object.assign(handle, {
    database,
    destroy: () => handle.close(),
  });
  cleanups.push(() => handle.close());
  return { db, cut: () => forwarder.close() };
}

async function health(t: TestManager): Promise<{ code: number; body: Health }> {
  const response = await t.call("GET", "/health", { token: null });
  return { code: response.status, body: (await response.json()) as Health };
}

for (const target of dbTargets) {
  describe(`manager /health on ${target}`, () => {
    test("says ok while the database answers, degraded with the reason once it does not, and stays 200", async () => {
      const { db, cut } = await breakableDb(target);
      const t = await testManager({ db });
      cleanups.push(() => t.manager.close());
      // The router mounted on the manager's port, as `npm start` mounts it.
      t.manager.mount(createRouterApp({ routes: t.manager.routes, usage: t.manager.usage }));

      const before = await health(t);
      // One scrape while the database answers: the gauges have values to keep.
      expect((await t.call("GET", "/metrics")).status).toBe(200);
      expect(before.code).toBe(200);
      expect(before.body).toMatchObject({
        status: "ok",
        database: target,
        database_status: "ok",
      });
      expect(before.body.routes_version).not.toBeNull();

      await cut();
      // The answer is cached for a few seconds; then the check fails and says why.
      const after = await eventually(
        async () => {
          const now = await health(t);
          return now.body.status === "degraded" ? now : undefined;
        },
        { what: "/health to report the database", timeoutMs: 20_000 },
      );
      expect(after.code).toBe(200);
      expect(after.body.database_status).toBe("unreachable");
      expect(after.body.reason).toStartWith("database: ");
      expect(after.body.reason?.length).toBeGreaterThan("database: ".length);
      // The route snapshot it serves from is still there, and the mounted router says so.
      expect(after.body.routes_version).toBe(before.body.routes_version);
      const routerHealth = await eventually(async () => {
        const response = await t.call("GET", "/healthz", { token: null });
        const body = (await response.json()) as { status: string; reason?: string };
        return body.status === "degraded" ? { code: response.status, ...body } : undefined;
      });
      expect(routerHealth.code).toBe(200);
      expect(routerHealth.reason).toStartWith("database unreachable: ");
      // /metrics still answers, within its bound on the state read, keeping the last values.
      const started = performance.now();
      const scraped = await t.call("GET", "/metrics");
      expect(scraped.status).toBe(200);
      expect(performance.now() - started).toBeLessThan(5000);
      const text = await scraped.text();
      expect(metric(text, "fleet_manager_workers", { status: "online" })).toBe(0);
      expect(metric(text, "fleet_manager_state_read_failures_total")).toBeGreaterThanOrEqual(1);
    }, 40_000);
  });
}
