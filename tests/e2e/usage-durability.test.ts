import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { sql } from "drizzle-orm";
import postgres from "postgres";
import { createDb } from "../../db/index.ts";
import {
  createTestDatabase,
  type OpenTestDb,
  openFreshDb,
  serviceDbTarget,
  type TestDatabase,
} from "../../devkit/db.ts";
import { type Running, startAgent, startManager, startTcpForwarder } from "../../devkit/fleet.ts";
import { metric, metricAt } from "../../devkit/metrics.ts";
import { eventually } from "../../devkit/net.ts";
import { stopAll } from "../../devkit/proc.ts";
import type { ModelInfo } from "../../protocol/index.ts";
import {
  addReplicas,
  createRouterCredential,
  type ServedManager,
  serveManager,
  startRouter,
  startSim,
} from "../router/fixtures.ts";

/**
 * Usage is never poisoned and never lost, across real processes: a worker that reports
 * impossible token counts, a router that sends impossible records, and standalone routers and
 * a manager restarted while records wait for the manager or the database.
 */

const chat = async (base: string, model: string, stream = false) => {
  const response = await fetch(`${base}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ model, stream, messages: [{ role: "user", content: "hi" }] }),
  });
  await response.text();
  return response.status;
};

const spoolDir = () => mkdtempSync(join(tmpdir(), "fleet-usage-durability-"));

describe("usage from a hostile worker and a hostile router", () => {
  let db: OpenTestDb;
  let manager: ServedManager;
  /** prompt_tokens the hostile worker reports, in turn: good, absurd, good, negative, ... */
  const reported: unknown[] = [7, 3_000_000_000, 7, -5, 7, 1.5, 7, "12"];
  let answered = 0;
  const hostile = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    async fetch(request) {
      // Health checks (the manager's probes, the router's replica check) find it well.
      if (request.method !== "POST") return Response.json({ status: "ok" });
      const body = (await request.json()) as { stream?: boolean };
      const usage = { prompt_tokens: reported[answered++ % reported.length], completion_tokens: 3 };
      const answer = { id: "x", object: "chat.completion", model: "hostile", choices: [], usage };
      if (!body.stream) return Response.json(answer);
      return new Response(`data: ${JSON.stringify(answer)}\n\ndata: [DONE]\n\n`, {
        headers: { "content-type": "text/event-stream" },
      });
    },
  });

  beforeAll(async () => {
    db = await openFreshDb();
    manager = await serveManager(db);
    await addReplicas(manager, "hostile", [
      { workerId: "hostile-worker", url: hostile.url.origin },
    ]);
  }, 60_000);
  afterAll(async () => {
    await stopAll();
    hostile.stop(true);
    await manager?.close();
    await db?.destroy();
  });

  test("every request is recorded; counts that are absurd, negative, fractional or strings are null, counted and named", async () => {
    const router = await startRouter("bun", manager.url);
    for (let i = 0; i < reported.length; i++) {
      expect(await chat(router.url, "hostile", i % 4 >= 2)).toBe(200);
    }
    const rows = await eventually(async () => {
      const all = await manager.usage();
      return all.length === reported.length ? all : undefined;
    });
    expect(rows.map((row) => row.prompt_tokens)).toEqual([7, null, 7, null, 7, null, 7, null]);
    expect(rows.every((row) => row.completion_tokens === 3 && row.status === 200)).toBe(true);
    expect(
      await metricAt(router.metrics, "fleet_router_usage_values_rejected_total", {
        field: "prompt_tokens",
      }),
    ).toBe(4);
    // One warning names the worker (the next ones within a minute are held back).
    const warnings = router.output().match(/usage value out of bounds[^\n]*hostile-worker/g);
    expect(warnings).toHaveLength(1);
  });

  test("a router's batch with bad records: the good ones are written, the bad ones set aside with the reason", async () => {
    await db.query(sql`truncate request_logs, usage_dead_letters`);
    const credential = await createRouterCredential(manager.url);
    const record = (fields: Record<string, unknown>) => ({
      ts: new Date().toISOString(),
      api_key_id: null,
      alias: "hostile",
      worker_id: "hostile-worker",
      status: 200,
      latency_ms: 10,
      ttft_ms: 5,
      prompt_tokens: 7,
      completion_tokens: 3,
      stream: false,
      ...fields,
    });
    const records = [
      record({ latency_ms: 1 }),
      record({ latency_ms: 2, prompt_tokens: 3e9 }),
      record({ latency_ms: 3 }),
      record({ latency_ms: 4, prompt_tokens: -5 }),
      record({ latency_ms: 5 }),
      record({ latency_ms: 6, prompt_tokens: 1.5 }),
      record({ latency_ms: 7 }),
      record({ latency_ms: 8, prompt_tokens: "12" }),
    ];
    const response = await fetch(`${manager.url}/v1/usage`, {
      method: "POST",
      headers: {
        "content-type": "application/json",
        authorization: `Bearer ${credential.token}`,
      },
      body: JSON.stringify({ records }),
    });
    expect(response.status).toBe(202);
    expect(await response.json()).toEqual({ accepted: 4, rejected: 4 });
    expect((await manager.usage()).map((row) => row.latency_ms)).toEqual([1, 3, 5, 7]);
    const letters = await db.query<{ source: string; reason: string; latency: number }>(
      sql`select source, reason, (record->>'latency_ms')::int as latency
          from usage_dead_letters order by id`,
    );
    expect(letters.map((l) => l.latency)).toEqual([2, 4, 6, 8]);
    expect(letters.every((l) => l.source === `router:${credential.id}`)).toBe(true);
    expect(letters.every((l) => l.reason.startsWith("invalid: prompt_tokens:"))).toBe(true);
    const text = manager.manager.metrics.render();
    expect(
      metric(text, "fleet_manager_usage_dead_letters_total", {
        reason: "invalid",
        source: "router",
      }),
    ).toBe(4);
  });
});

describe("a standalone router restarted while the manager is down", () => {
  let db: OpenTestDb;
  let manager: ServedManager;

  beforeAll(async () => {
    db = await openFreshDb();
    manager = await serveManager(db);
    const sim = await startSim({ names: ["qwen"] });
    await addReplicas(manager, "qwen", [{ workerId: "sim-worker", url: sim.url }]);
  }, 60_000);
  afterAll(async () => {
    await stopAll();
    await manager?.close();
    await db?.destroy();
  });

  for (const runtime of ["bun", "node"] as const) {
    test(`${runtime}: records made during the outage survive a kill and arrive after the restart`, async () => {
      const dir = spoolDir();
      const credential = await createRouterCredential(manager.url);
      const env = { USAGE_SPOOL_DIR: dir, USAGE_FLUSH_MS: "100" };
      const before = await startRouter(runtime, manager.url, env, credential);
      const delivered = (await manager.usage()).length;
      manager.stop();
      const outage = 12;
      for (let i = 0; i < outage; i++)
        expect(await chat(before.url, "qwen", i % 2 === 0)).toBe(200);
      // Backing off, the router moves them to disk: nothing waits in memory.
      await eventually(
        async () =>
          (await metricAt(before.metrics, "fleet_router_usage_spooled")) === outage &&
          (await metricAt(before.metrics, "fleet_router_usage_buffered")) === 0,
        { what: "the records to be spooled" },
      );
      await before.stop("SIGKILL");
      manager.resume();
      const after = await startRouter(runtime, manager.url, env, credential);
      await eventually(async () => (await manager.usage()).length === delivered + outage, {
        what: "every record of the outage to arrive",
      });
      await eventually(() => readdirSync(dir).length === 0, { what: "the spool to be emptied" });
      // Nothing was dropped (the counter has no sample until something is).
      expect((await metricAt(after.metrics, "fleet_router_usage_dropped_total")) || 0).toBe(0);
      await after.stop();
    });
  }
});

describe(`a manager restarted with usage waiting for the database (${serviceDbTarget})`, () => {
  let database: TestDatabase;
  /** Records the mounted router made: one per request it answered (`fleet_router_requests_total`). */
  const made = (manager: Running) =>
    metricAt(`${manager.url}/metrics`, "fleet_router_requests_total");

  beforeAll(async () => {
    database = await createTestDatabase();
  });
  afterAll(async () => {
    await stopAll();
    await database?.destroy();
  });

  /** Starts a manager (open, on loopback) over `env`, with an agent and a ready model. */
  const managerWithModel = async (env: Record<string, string>, spool: string) => {
    const manager = await startManager({ database, env: { ...env, USAGE_SPOOL_DIR: spool } });
    const agent = await startAgent({ managerUrl: manager.url, workerId: "durable-worker" });
    await eventually(async () => (await fetch(`${manager.url}/v1/workers/durable-worker`)).ok, {
      what: "the agent to register",
    });
    const placed = await fetch(`${manager.url}/v1/models/register`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ alias: "qwen", model_name: "org/qwen", gpu_memory_utilization: 0.5 }),
    });
    expect(placed.status).toBe(201);
    await eventually(
      async () => {
        const model = (await (await fetch(`${manager.url}/v1/models/qwen`)).json()) as ModelInfo;
        return model.status === "ready";
      },
      { what: "the model to be ready", timeoutMs: 30_000 },
    );
    await eventually(async () => (await chat(manager.url, "qwen")) === 200, {
      what: "the mounted router to serve it",
    });
    return { manager, agent };
  };

  test.skipIf(serviceDbTarget !== "postgres")(
    "Postgres unreachable: records go to the spool; the manager killed and started again writes every one",
    async () => {
      const url = new URL(database.env.DATABASE_URL ?? "");
      const forwarder = await startTcpForwarder(Number(url.port || 5432));
      const throughForwarder = new URL(url);
      throughForwarder.port = String(forwarder.port);
      const spool = spoolDir();
      const { manager, agent } = await managerWithModel(
        { DATABASE_URL: throughForwarder.toString() },
        spool,
      );
      const count = async () => {
        const client = postgres(url.toString(), { max: 1, onnotice: () => {} });
        try {
          const [row] = await client`select count(*)::int as n from request_logs`;
          return (row as { n: number }).n;
        } finally {
          await client.end();
        }
      };
      const delivered = await made(manager);
      await eventually(async () => (await count()) === delivered, {
        what: "the records before the outage to be written",
      });
      await forwarder.close(); // the database is gone for the manager
      const outage = 10;
      for (let i = 0; i < outage; i++)
        expect(await chat(manager.url, "qwen", i % 2 === 0)).toBe(200);
      await eventually(
        async () =>
          (await metricAt(`${manager.url}/metrics`, "fleet_manager_usage_pending", {
            where: "spool",
          })) === outage,
        { what: "the records to be spooled", timeoutMs: 30_000 },
      );
      const expected = await made(manager);
      expect(expected).toBe(delivered + outage);
      await manager.stop("SIGKILL");
      await agent.stop();
      // Started again with the database reachable (directly), over the same spool.
      const again = await startManager({
        database,
        env: { DATABASE_URL: url.toString(), USAGE_SPOOL_DIR: spool },
      });
      await eventually(async () => (await count()) === expected, {
        what: "every record of the outage to be written",
      });
      expect(readdirSync(spool)).toEqual([]);
      await again.stop();
    },
    120_000,
  );

  test.skipIf(serviceDbTarget !== "pglite")(
    "embedded database: records pending when the manager stops are written, none lost across the restart",
    async () => {
      const spool = spoolDir();
      const { manager, agent } = await managerWithModel({}, spool);
      for (let i = 0; i < 10; i++) expect(await chat(manager.url, "qwen", i % 2 === 0)).toBe(200);
      const expected = await made(manager);
      await manager.stop(); // SIGTERM at once: records still pending are written or spooled
      await agent.stop();
      const again = await startManager({ database, env: { USAGE_SPOOL_DIR: spool } });
      await again.stop();
      const fleetDb = await createDb({ dataDir: database.env.FLEET_DATA_DIR });
      try {
        const [row] = await fleetDb.query<{ n: number }>(
          sql`select count(*)::int as n from request_logs`,
        );
        expect(row?.n).toBe(expected);
        expect(readdirSync(spool)).toEqual([]);
      } finally {
        await fleetDb.close();
      }
    },
    120_000,
  );
});
