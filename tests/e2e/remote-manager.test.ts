import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { sql } from "drizzle-orm";
import { createDb } from "../../db/index.ts";
import { createTestDatabase, serviceDbTarget, type TestDatabase } from "../../devkit/db.ts";
import {
  type Running,
  type RunningAgent,
  startAgent,
  startManager,
  startTcpForwarder,
  type TcpForwarder,
} from "../../devkit/fleet.ts";
import { eventually, freePort } from "../../devkit/net.ts";
import { bunBin, startProcess, stopAll } from "../../devkit/proc.ts";
import type { ModelInfo, WorkerInfo } from "../../protocol/index.ts";

setDefaultTimeout(60_000);

/**
 * The manager on another host, played on loopback: the URL the agent advertises as internal
 * does not answer (nothing listens on it, as the manager's own loopback would not), and its
 * PUBLIC_URL is a TCP forwarder to the agent's port, as a rental provider's port mapping is.
 * Everything the manager does to the worker must go through the mapping.
 */
describe(`a remote manager reaches a worker only through its port mapping (${serviceDbTarget})`, () => {
  const FLEET_TOKEN = "fleet-secret-remote";
  const ADMIN_TOKEN = "admin-secret-remote";
  const alias = "remote-qwen";
  let database: TestDatabase;
  let manager: Running;
  let forwarder: TcpForwarder;
  let internalUrl: string;
  let publicUrl: string;

  async function call<T>(
    method: string,
    path: string,
    body?: unknown,
  ): Promise<{ status: number; body: T; text: string }> {
    const response = await fetch(`${manager.url}${path}`, {
      method,
      headers: { authorization: `Bearer ${ADMIN_TOKEN}`, "content-type": "application/json" },
      body: body === undefined ? null : JSON.stringify(body),
    });
    const text = await response.text();
    let parsed: unknown = null;
    try {
      parsed = JSON.parse(text);
    } catch {}
    return { status: response.status, body: parsed as T, text };
  }

  const worker = async () => (await call<WorkerInfo>("GET", "/v1/workers/rented-1")).body;

  async function fleet(...args: string[]): Promise<string> {
    const cli = startProcess([bunBin, "bin/fleet.ts", ...args], {
      env: { FLEET_URL: manager.url, ADMIN_TOKEN },
    });
    expect(await cli.exited()).toBe(0);
    return cli.output();
  }

  let agent: RunningAgent;

  beforeAll(async () => {
    database = await createTestDatabase();
    manager = await startManager({
      database,
      env: { FLEET_TOKEN, ADMIN_TOKEN, PROBE_INTERVAL_S: "0.5", PROBE_TIMEOUT_MS: "1000" },
    });
    const agentPort = await freePort();
    internalUrl = `http://127.0.0.1:${await freePort()}`;
    forwarder = await startTcpForwarder(agentPort);
    publicUrl = forwarder.url;
    agent = await startAgent({
      managerUrl: manager.url,
      workerId: "rented-1",
      port: agentPort,
      env: { WORKER_URL: internalUrl, PUBLIC_URL: publicUrl, FLEET_TOKEN },
    });
  });
  afterAll(async () => {
    await stopAll();
    await forwarder?.close();
    await database?.destroy();
  });

  test("the worker is shown with its internal path unreachable and managed over the public one", async () => {
    const info = await eventually(
      async () => {
        const w = await worker();
        return w?.paths?.public?.reachable === true && w.paths.internal.reachable === false
          ? w
          : undefined;
      },
      { what: "both paths probed" },
    );
    expect(info.paths.internal).toMatchObject({ url: internalUrl, reachable: false, rtt_ms: null });
    expect(info.paths.internal.error).toBeString();
    expect(info.paths.public).toMatchObject({ url: publicUrl, reachable: true, error: null });
    expect(info.paths.public?.rtt_ms).toBeNumber();
    expect(info.management_path).toBe("public");
    expect(info.problems).toEqual([]);

    const table = await fleet("workers", "ls");
    expect(table).toMatch(/^WORKER\s+STATUS\s+PATH\s+RTT\s+FLAGS\s+URL\s+PUBLIC URL\s+GPUS/);
    const row = table.split("\n").find((line) => line.startsWith("rented-1"));
    expect(row).toMatch(/^rented-1\s+online\s+public\s+\d+ms\s+-\s+/);
    expect(row).toContain(publicUrl);
  });

  test("launch, logs, chat and stop all work through the public URL", async () => {
    const carried = forwarder.bytesIn();
    const registered = await call<ModelInfo>("POST", "/v1/models/register", {
      alias,
      model_name: "Qwen/Qwen2-VL-2B-Instruct",
      max_model_len: 4096,
      gpu_memory_utilization: 0.5,
    });
    expect(registered.status).toBe(201);
    expect(registered.body.routes[0]?.worker_url).toBe(publicUrl);
    await eventually(
      async () => {
        const { body } = await call<ModelInfo>("GET", `/v1/models/${alias}`);
        if (body.status === "failed") throw new Error(JSON.stringify(body.instances));
        return body.status === "ready";
      },
      { timeoutMs: 30_000, what: `${alias} ready` },
    );
    // The launch (model name and all) crossed the mapping: it is the only way to the agent.
    expect(forwarder.bytesIn() - carried).toBeGreaterThan("Qwen/Qwen2-VL-2B-Instruct".length);

    const logs = await call<null>("GET", `/v1/models/${alias}/logs?tail=50`);
    expect(logs.status).toBe(200);
    expect(logs.text).toContain("Application startup complete.");
    expect(logs.text).not.toContain("logs unavailable");

    await eventually(async () => {
      const chat = await fetch(`${manager.url}/v1/chat/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({
          model: alias,
          messages: [{ role: "user", content: "over the map" }],
        }),
      });
      if (chat.status !== 200) return undefined;
      const reply = (await chat.json()) as { choices: { message: { content: string } }[] };
      expect(reply.choices[0]?.message.content).toBe("over the map");
      return true;
    });

    const removed = await call<{ stopped: { worker_id: string; ok: boolean; error?: string }[] }>(
      "DELETE",
      `/v1/models/${alias}`,
    );
    expect(removed.status).toBe(200);
    expect(removed.body.stopped).toEqual([{ worker_id: "rented-1", ok: true }]);
    // With the agent credential it got when it joined (FLEET_TOKEN opens nothing there).
    const instances = await fetch(`${publicUrl}/v1/instances`, {
      headers: { authorization: `Bearer ${agent.credentials()?.agent_token}` },
    });
    const listed = (await instances.json()) as { instances: { alias: string; status: string }[] };
    expect(listed.instances.filter((i) => i.status !== "stopped")).toEqual([]);
  });

  test("when the mapping goes away: no path, an event, and problems that name the fix", async () => {
    await forwarder.close();
    const info = await eventually(
      async () => {
        const w = await worker();
        return w.paths.public?.reachable === false ? w : undefined;
      },
      { what: "the public path unreachable" },
    );
    expect(info.management_path).toBeNull();
    expect(info.problems).toHaveLength(1);
    const [problem] = info.problems;
    expect(problem).toStartWith(
      `no path reaches this worker: the manager cannot dial ${internalUrl} (its loopback: `,
    );
    expect(problem).toContain(`nor its public URL ${publicUrl} (`);
    expect(problem).toContain(
      "check that the port mapping forwards to the agent's WORKER_PORT and that PUBLIC_URL is the mapping's URL, or set WORKER_URL to an address the manager can dial",
    );

    const shown = await fleet("workers", "show", "rented-1");
    expect(shown).toMatch(/public\s+http:\/\/127\.0\.0\.1:\d+\s+unreachable: /);
    expect(shown).toContain(`problems:\n  - ${problem}`);
    const table = await fleet("workers", "ls");
    expect(table).toMatch(/rented-1\s+online\s+none\s+-\s+no-path\s+/);
    expect(table).toContain("rented-1: 1 problem(s): fleet workers show rented-1");

    await manager.stop();
    const db = await createDb({
      url: database.env.DATABASE_URL,
      dataDir: database.env.FLEET_DATA_DIR,
    });
    try {
      const events = await db.query<{ from_status: string; to_status: string; detail: unknown }>(
        sql`select from_status, to_status, detail from events
            where kind = 'worker.path_changed' and worker_id = 'rented-1' order by id`,
      );
      expect(events).toEqual([
        {
          from_status: "reachable",
          to_status: "unreachable",
          detail: { path: "public", url: publicUrl, reachable: false, error: expect.any(String) },
        },
      ]);
    } finally {
      await db.close();
    }
  });
});
