import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import postgres from "postgres";
import { createTestDatabase, type TestDatabase } from "../../devkit/db.ts";
import { type Running, startAgent, startManager } from "../../devkit/fleet.ts";
import { eventually } from "../../devkit/net.ts";
import { stopAll } from "../../devkit/proc.ts";
import type { ModelInfo } from "../../protocol/index.ts";

const ADMIN_TOKEN = "admin-token-replicas";
const FLEET_TOKEN = "fleet-token-replicas";

/**
 * Two manager processes on one Postgres database, each with agents of its own: a model
 * registered on one is served by both, and when its host dies the fleet converges on exactly
 * one replacement (the loops run under advisory locks; constraints catch what slips through).
 */
describe.if(Boolean(process.env.DATABASE_URL))("two managers sharing one Postgres", () => {
  let database: TestDatabase;
  let sql: ReturnType<typeof postgres>;
  let managerA: Running;
  let managerB: Running;
  const agents = new Map<string, Running>();
  /** Engines of agents killed with SIGKILL: nobody stops them (a known agent limit). */
  const orphanedEngines: number[] = [];

  const call = async <T>(manager: Running, method: string, path: string, body?: unknown) => {
    const response = await fetch(`${manager.url}${path}`, {
      method,
      headers: { authorization: `Bearer ${ADMIN_TOKEN}`, "content-type": "application/json" },
      body: body === undefined ? null : JSON.stringify(body),
    });
    const text = await response.text();
    return { status: response.status, body: (text ? JSON.parse(text) : null) as T };
  };
  const chat = async (manager: Running) => {
    const response = await fetch(`${manager.url}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: "shared", messages: [{ role: "user", content: "both" }] }),
    });
    return { status: response.status, text: await response.text() };
  };

  beforeAll(async () => {
    database = await createTestDatabase("postgres");
    sql = postgres(database.env.DATABASE_URL ?? "", { max: 1, onnotice: () => {} });
    const env = {
      ADMIN_TOKEN,
      FLEET_TOKEN,
      WORKER_TIMEOUT_S: "2",
      RESCHEDULE_AFTER_S: "0",
      HEARTBEAT_INTERVAL_S: "0.3",
    };
    // Started together: migrations run once under the advisory lock.
    [managerA, managerB] = await Promise.all([
      startManager({ database, env }),
      startManager({ database, env }),
    ]);
    for (const [id, manager] of [
      ["w-a", managerA],
      ["w-b", managerB],
    ] as const) {
      agents.set(
        id,
        await startAgent({
          managerUrl: manager.url,
          workerId: id,
          env: { FLEET_TOKEN, SIM_STARTUP_DELAY_MS: "200" },
        }),
      );
    }
    await eventually(async () => {
      const { body } = await call<{ workers: Array<{ status: string }> }>(
        managerB,
        "GET",
        "/v1/workers",
      );
      return body.workers.filter((w) => w.status === "online").length === 2;
    });
  });
  afterAll(async () => {
    for (const pid of orphanedEngines) {
      try {
        process.kill(-pid, "SIGKILL"); // each engine leads its own process group
      } catch {}
    }
    await stopAll();
    await sql?.end();
    await database?.destroy();
  });

  test("a model registered on one manager is served by both", async () => {
    const { status } = await call(managerA, "POST", "/v1/models/register", {
      alias: "shared",
      model_name: "org/shared",
      gpu_memory_utilization: 0.5,
    });
    expect(status).toBe(201);
    await eventually(
      async () =>
        (await call<ModelInfo>(managerB, "GET", "/v1/models/shared")).body.status === "ready",
    );
    for (const manager of [managerA, managerB]) {
      const reply = await eventually(async () => {
        const result = await chat(manager);
        return result.status === 200 ? result : undefined;
      });
      expect(reply.text).toContain('"content":"both"');
    }
  });

  test("when the model's host dies, exactly one replacement starts elsewhere", async () => {
    const before = (await call<ModelInfo>(managerA, "GET", "/v1/models/shared")).body;
    const dead = before.instances[0]?.worker_id ?? "";
    const survivor = dead === "w-a" ? "w-b" : "w-a";
    const enginePid = before.instances[0]?.pid;
    if (enginePid) orphanedEngines.push(enginePid);
    await agents.get(dead)?.stop("SIGKILL");

    const after = await eventually(
      async () => {
        const { body } = await call<ModelInfo>(managerB, "GET", "/v1/models/shared");
        const ready = body.instances.filter((i) => i.status === "ready");
        return ready.length === 1 && ready[0]?.worker_id === survivor ? body : undefined;
      },
      { timeoutMs: 30_000, what: `the model ready on ${survivor}` },
    );
    expect(after.instances.filter((i) => i.worker_id === survivor)).toHaveLength(1);

    const events = await sql<{ kind: string; n: number }[]>`
      select kind, count(*)::int as n from events
      where kind in ('worker.offline', 'instance.rescheduled') group by kind order by kind`;
    expect([...events]).toEqual([
      { kind: "instance.rescheduled", n: 1 },
      { kind: "worker.offline", n: 1 },
    ]);
    for (const manager of [managerA, managerB]) {
      const reply = await eventually(async () => {
        const result = await chat(manager);
        return result.status === 200 ? result : undefined;
      });
      expect(reply.text).toContain('"content":"both"');
    }
  });
});
