import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import OpenAI from "openai";
import postgres from "postgres";
import { createTestDatabase, serviceDbTarget, type TestDatabase } from "../../devkit/db.ts";
import {
  type Running,
  startAgent,
  startManager,
  startTcpForwarder,
  type TcpForwarder,
} from "../../devkit/fleet.ts";
import { eventually } from "../../devkit/net.ts";
import { stopAll } from "../../devkit/proc.ts";
import type { ModelInfo, RouteSnapshot } from "../../protocol/index.ts";

/**
 * The original system's port-forwarding guide, run as written with this project's commands:
 * start the manager, start a worker with PUBLIC_URL, register qwen-vl-2b, chat. A TCP
 * forwarder on another loopback address plays the rental host's port mapping.
 */
const guideModel = {
  alias: "qwen-vl-2b",
  model_name: "Qwen/Qwen2-VL-2B-Instruct",
  max_model_len: 4096,
  gpu_memory_utilization: 0.8,
};

async function call<T>(
  manager: Running,
  method: string,
  path: string,
  options: { token?: string; body?: unknown } = {},
): Promise<{ status: number; body: T }> {
  const response = await fetch(`${manager.url}${path}`, {
    method,
    headers: {
      "content-type": "application/json",
      ...(options.token ? { authorization: `Bearer ${options.token}` } : {}),
    },
    body: options.body === undefined ? null : JSON.stringify(options.body),
  });
  const text = await response.text();
  return { status: response.status, body: (text ? JSON.parse(text) : null) as T };
}

async function waitReady(manager: Running, token?: string): Promise<ModelInfo> {
  return eventually(
    async () => {
      const { body } = await call<ModelInfo>(manager, "GET", `/v1/models/${guideModel.alias}`, {
        token,
      });
      if (body.status === "failed")
        throw new Error(`model failed: ${JSON.stringify(body.instances)}`);
      return body.status === "ready" ? body : undefined;
    },
    { timeoutMs: 30_000, what: "qwen-vl-2b ready" },
  );
}

describe(`the port-forwarding guide, end to end (${serviceDbTarget})`, () => {
  const FLEET_TOKEN = "fleet-secret-e2e";
  const ADMIN_TOKEN = "admin-secret-e2e";
  let database: TestDatabase;
  let manager: Running;
  let agent: Running;
  let forwarder: TcpForwarder;
  let publicUrl: string;

  beforeAll(async () => {
    database = await createTestDatabase();
    // 1. The manager, with the router mounted, on the control host.
    manager = await startManager({ database, env: { FLEET_TOKEN, ADMIN_TOKEN } });
    // 2. The worker on the rented box: listens on 0.0.0.0, reached from outside only through
    // the provider's port mapping, played here by a forwarder on another loopback address.
    const { freePort } = await import("../../devkit/net.ts");
    const workerPort = await freePort();
    forwarder = await startTcpForwarder(workerPort, "127.0.0.2");
    publicUrl = `http://127.0.0.2:${forwarder.port}`;
    agent = await startAgent({
      managerUrl: manager.url,
      workerId: "worker-1",
      port: workerPort,
      env: {
        WORKER_HOST: "0.0.0.0",
        // As operators paste it, trailing slash and all.
        PUBLIC_URL: `${publicUrl}/`,
        FLEET_TOKEN,
      },
    });
  });
  afterAll(async () => {
    await stopAll();
    await forwarder?.close();
    await database?.destroy();
  });

  test("the worker registers with its internal and public URLs", async () => {
    const worker = await eventually(async () => {
      const { status, body } = await call<{
        worker_url: string;
        public_worker_url: string | null;
        status: string;
      }>(manager, "GET", "/v1/workers/worker-1", { token: ADMIN_TOKEN });
      return status === 200 ? body : undefined;
    });
    expect(worker.worker_url).toBe(`http://127.0.0.1:${agent.port}`);
    expect(worker.public_worker_url).toBe(publicUrl);
    expect(worker.status).toBe("online");
  });

  test("registering the model records a route through the public URL", async () => {
    const { status, body } = await call<ModelInfo>(manager, "POST", "/v1/models/register", {
      token: ADMIN_TOKEN,
      body: guideModel,
    });
    expect(status).toBe(201);
    expect(body.routes).toHaveLength(1);
    const [route] = body.routes;
    // The original's record, plus whether routers serve it (never the agent's credential).
    expect(Object.keys(route ?? {}).sort()).toEqual(
      ["alias", "created_at", "model_name", "vllm_port", "worker_id", "worker_url", "ready"].sort(),
    );
    expect(route).toMatchObject({
      alias: "qwen-vl-2b",
      model_name: "Qwen/Qwen2-VL-2B-Instruct",
      worker_id: "worker-1",
      worker_url: publicUrl,
    });
    expect(route?.vllm_port).toBeGreaterThan(0);

    const ready = await waitReady(manager, ADMIN_TOKEN);
    expect(ready.routes[0]?.worker_url).toBe(publicUrl);
    // Routers see it once the snapshot catches up with the ready instance.
    const routes = await eventually(async () => {
      const snapshot = await call<RouteSnapshot>(manager, "GET", "/v1/routes", {
        token: ADMIN_TOKEN,
      });
      return snapshot.body.routes.every((r) => r.ready) ? snapshot.body.routes : undefined;
    });
    expect(routes).toEqual([
      expect.objectContaining({ alias: "qwen-vl-2b", worker_url: publicUrl, ready: true }),
    ]);
  });

  test.if(serviceDbTarget === "postgres")(
    "route_table shows the route as public and serving",
    async () => {
      const sql = postgres(database.env.DATABASE_URL ?? "", { max: 1 });
      try {
        const rows =
          await sql`select url, is_public, serving from route_table where alias = 'qwen-vl-2b'`;
        expect([...rows]).toEqual([{ url: publicUrl, is_public: true, serving: true }]);
      } finally {
        await sql.end();
      }
    },
  );

  test("chat on the manager's port travels through the port mapping", async () => {
    const before = { connections: forwarder.connections(), bytes: forwarder.bytesIn() };
    const client = new OpenAI({ baseURL: `${manager.url}/v1`, apiKey: "unused", maxRetries: 0 });

    const reply = await client.chat.completions.create({
      model: "qwen-vl-2b",
      messages: [{ role: "user", content: "Hello from the guide" }],
    });
    expect(reply.choices[0]?.message.content).toBe("Hello from the guide");
    expect(reply.model).toBe("qwen-vl-2b");

    const stream = await client.chat.completions.create({
      model: "qwen-vl-2b",
      messages: [{ role: "user", content: "streamed through the forwarder" }],
      stream: true,
    });
    let text = "";
    for await (const chunk of stream) text += chunk.choices[0]?.delta.content ?? "";
    expect(text).toBe("streamed through the forwarder");

    expect(forwarder.connections()).toBeGreaterThan(before.connections);
    // Both request bodies crossed the mapping (the router forwards to the public URL).
    expect(forwarder.bytesIn() - before.bytes).toBeGreaterThan(
      JSON.stringify({ messages: [{ content: "Hello from the guide" }] }).length,
    );
  });

  test("the agent's proxy behind the mapping refuses strangers", async () => {
    const response = await fetch(`${publicUrl}/proxy/qwen-vl-2b/v1/models`);
    expect(response.status).toBe(401);
    const body = (await response.json()) as { error: { message: string } };
    expect(body.error.message).toBeString();
  });
});

describe(`the guide without PUBLIC_URL (${serviceDbTarget})`, () => {
  let database: TestDatabase;
  let manager: Running;
  let agent: Running;
  let forwarder: TcpForwarder;

  beforeAll(async () => {
    database = await createTestDatabase();
    // The guide's curl commands as written: loopback, no tokens.
    manager = await startManager({ database });
    agent = await startAgent({ managerUrl: manager.url, workerId: "worker-1" });
    forwarder = await startTcpForwarder(agent.port, "127.0.0.2");
  });
  afterAll(async () => {
    await stopAll();
    await forwarder?.close();
    await database?.destroy();
  });

  test("the route falls back to the internal worker_url and chat goes direct", async () => {
    await eventually(
      async () => (await call(manager, "GET", "/v1/workers/worker-1")).status === 200,
    );
    const { status, body } = await call<ModelInfo>(manager, "POST", "/v1/models/register", {
      body: guideModel,
    });
    expect(status).toBe(201);
    expect(body.routes[0]?.worker_url).toBe(`http://127.0.0.1:${agent.port}`);
    await waitReady(manager);
    await eventually(async () => {
      const snapshot = await call<RouteSnapshot>(manager, "GET", "/v1/routes");
      return snapshot.body.routes.some((r) => r.ready);
    });

    const response = await call<{ choices: Array<{ message: { content: string } }> }>(
      manager,
      "POST",
      "/v1/chat/completions",
      { body: { model: "qwen-vl-2b", messages: [{ role: "user", content: "Hello!" }] } },
    );
    expect(response.status).toBe(200);
    expect(response.body.choices[0]?.message.content).toBe("Hello!");
    expect(forwarder.connections()).toBe(0);
  });
});
