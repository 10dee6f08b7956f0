import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { createTestDatabase, serviceDbTarget, type TestDatabase } from "../../devkit/db.ts";
import { type Running, startAgent, startManager } from "../../devkit/fleet.ts";
import { eventually } from "../../devkit/net.ts";
import { stopAll } from "../../devkit/proc.ts";
import type {
  ApiKeyCreated,
  InstanceRecord,
  ModelInfo,
  RouteSnapshot,
} from "../../protocol/index.ts";

const ADMIN_TOKEN = "admin-token-restart";
const FLEET_TOKEN = "fleet-token-restart";

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/**
 * `POST /v1/instances/{id}/restart` across processes: `bun manager/main.ts` and one
 * `bun agent/main.ts` whose engine is the simulator. The route leaves the snapshot at once
 * (the mounted router answers 503, not a broken connection), the engine is a new process on
 * the same port, its launch progress shows again, and it is served again once ready.
 */
describe(`instance restart across processes (${serviceDbTarget})`, () => {
  let database: TestDatabase;
  let manager: Running;
  let apiKey: string;

  const admin = async <T>(method: string, path: string, body?: unknown) => {
    const response = await fetch(`${manager.url}${path}`, {
      method,
      headers: { authorization: `Bearer ${ADMIN_TOKEN}`, "content-type": "application/json" },
      body: body === undefined ? null : JSON.stringify(body),
    });
    const text = await response.text();
    const isJson = response.headers.get("content-type")?.includes("json");
    return { status: response.status, body: (isJson ? JSON.parse(text) : null) as T, text };
  };
  const instance = async (): Promise<InstanceRecord> => {
    const { body } = await admin<ModelInfo>("GET", "/v1/models/rs");
    const first = body.instances[0];
    if (!first) throw new Error("rs has no instance");
    return first;
  };
  const routeReady = async () => {
    const { body } = await admin<RouteSnapshot>("GET", "/v1/routes");
    return body.routes.find((r) => r.alias === "rs")?.ready;
  };
  const chat = async () => {
    const response = await fetch(`${manager.url}/v1/chat/completions`, {
      method: "POST",
      headers: { authorization: `Bearer ${apiKey}`, "content-type": "application/json" },
      body: JSON.stringify({ model: "rs", messages: [{ role: "user", content: "hello" }] }),
    });
    return { status: response.status, body: await response.text() };
  };

  beforeAll(async () => {
    database = await createTestDatabase();
    manager = await startManager({ database, env: { ADMIN_TOKEN, FLEET_TOKEN } });
    await startAgent({
      managerUrl: manager.url,
      workerId: "restart-w1",
      // Long enough a load that the restarted engine is seen loading, with shards to count.
      env: { FLEET_TOKEN, SIM_STARTUP_DELAY_MS: "2000", SIM_STARTUP_SHARDS: "4" },
    });
    await eventually(
      async () => (await admin<{ workers: unknown[] }>("GET", "/v1/workers")).body.workers.length,
      { what: "the agent to register", timeoutMs: 20_000 },
    );
    const placed = await admin("POST", "/v1/models/register", {
      alias: "rs",
      model_name: "org/restart",
      gpu_memory_utilization: 0.5,
    });
    expect(placed.status).toBe(201);
    await eventually(async () => (await instance()).status === "ready", {
      what: "rs to be ready",
      timeoutMs: 30_000,
    });
    const key = await admin<ApiKeyCreated>("POST", "/v1/keys", { name: "restart" });
    apiKey = key.body.key;
  }, 120_000);

  afterAll(async () => {
    // Stops the agent (and with it its engines) and the manager.
    await stopAll();
    await database?.destroy();
  });

  test("a ready instance restarts in place: unserved, loading again with progress, then served", async () => {
    const before = await instance();
    const pid = before.pid;
    if (pid === null) throw new Error("no pid");
    expect(alive(pid)).toBe(true);
    expect(await routeReady()).toBe(true);
    expect((await chat()).status).toBe(200);

    const reply = await admin<InstanceRecord>("POST", `/v1/instances/${before.id}/restart`, {
      requested_by: "e2e test",
    });
    expect(reply.status).toBe(202);
    expect(reply.body).toMatchObject({ status: "stopping", restarts: 1, port: before.port });
    // Unserved in the commit that answered: the mounted router has no replica to send to.
    expect(await routeReady()).toBe(false);
    const during = await chat();
    expect(during.status).toBe(503);
    expect(JSON.parse(during.body).error.code).toBe("no_ready_replica");
    // A second restart meanwhile is refused.
    const again = await admin<{ error: { message: string } }>(
      "POST",
      `/v1/instances/${before.id}/restart`,
    );
    expect(again.status).toBe(409);

    // The new process loads: a new pid, the launch's progress reported again.
    const loading = await eventually(
      async () => {
        const now = await instance();
        return now.status === "starting" && now.progress && now.pid !== pid ? now : null;
      },
      { what: "the restarted engine loading", timeoutMs: 15_000, intervalMs: 50 },
    );
    expect(loading.progress?.phase).not.toBe("ready");
    expect(loading.port).toBe(before.port);
    expect(await routeReady()).toBe(false);

    const after = await eventually(
      async () => {
        const now = await instance();
        return now.status === "ready" ? now : null;
      },
      { what: "the restarted engine ready", timeoutMs: 20_000 },
    );
    expect(after.pid).toBe(loading.pid);
    expect(after.pid).not.toBe(pid);
    expect(after.restarts).toBe(1);
    expect(after.port).toBe(before.port);
    expect(alive(pid)).toBe(false);
    expect(alive(after.pid ?? 0)).toBe(true);
    await eventually(async () => (await routeReady()) === true, { what: "the route served" });
    expect((await chat()).status).toBe(200);

    // The event says who asked; the agent's own view agrees on the count.
    const events = await admin<null>("GET", "/events?model=rs");
    expect(events.text).toContain("instance.restarted");
    expect(events.text).toContain("restart requested by e2e test");
    const workers = await admin<{ workers: { instances: InstanceRecord[] }[] }>(
      "GET",
      "/v1/workers",
    );
    expect(workers.body.workers[0]?.instances[0]?.restarts).toBe(1);
  }, 60_000);
});
