import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { createTestDatabase, serviceDbTarget, type TestDatabase } from "../../devkit/db.ts";
import { freePort, waitForHttp } from "../../devkit/net.ts";
import { type Service, startProcess, stopAll } from "../../devkit/proc.ts";
import { gpu } from "./helpers.ts";

/** `npm run manager:node`: the same manager app, with the router mounted, on Node. */
describe(`manager on Node (${serviceDbTarget})`, () => {
  let database: TestDatabase;
  let manager: Service;
  let url: string;

  beforeAll(async () => {
    database = await createTestDatabase();
    const port = await freePort();
    url = `http://127.0.0.1:${port}`;
    // tsx as a loader (not its CLI) keeps the manager one process that stop() reaches.
    manager = startProcess(["node", "--import", "tsx", "manager/node.ts"], {
      env: {
        DATABASE_URL: "",
        ...database.env,
        HOST: "127.0.0.1",
        PORT: String(port),
        // The workers below advertise URLs nobody serves (one with a name): no probes, no lookups.
        PROBE_INTERVAL_S: "0",
      },
    });
    await manager.waitFor("manager listening", 60_000);
    await waitForHttp(`${url}/health`);
  });
  afterAll(async () => {
    await stopAll();
    await database?.destroy();
  });

  test("it says it runs on Node and keeps the worker registry", async () => {
    expect(manager.output()).toMatch(/manager listening on http:\/\/127\.0\.0\.1:\d+ \(node v\d+/);
    const registered = await fetch(`${url}/v1/workers/register`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        worker_id: "node-box",
        worker_url: "http://127.0.0.1:6006",
        public_worker_url: "https://node-box.example.test:8443/",
        gpu_info: { gpus: [] },
        agent_version: "test",
      }),
    });
    expect(registered.status).toBe(200);
    const worker = (await (await fetch(`${url}/v1/workers/node-box`)).json()) as {
      public_worker_url: string;
      status: string;
    };
    expect(worker).toMatchObject({
      public_worker_url: "https://node-box.example.test:8443",
      status: "online",
    });
  });

  test("the mounted router answers OpenAI requests in OpenAI's shape", async () => {
    const response = await fetch(`${url}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: "nothing-here", messages: [{ role: "user", content: "hi" }] }),
    });
    expect(response.status).toBe(404);
    const body = (await response.json()) as { error: { code: string; param: string | null } };
    expect(body.error.code).toBe("model_not_found");
  });

  test("the console renders on Node too (JSX through tsx), with a registered worker", async () => {
    const registered = await fetch(`${url}/v1/workers/register`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        worker_id: "node-console-box",
        worker_url: "http://127.0.0.1:6007",
        gpu_info: { gpus: [] },
        agent_version: "test",
      }),
    });
    expect(registered.status).toBe(200);
    const page = await fetch(`${url}/`);
    expect(page.status).toBe(200);
    const html = await page.text();
    expect(html).toStartWith("<!doctype html>");
    expect(html).toContain("node-console-box");
  });

  test("bad input gets a 400 naming the field", async () => {
    const response = await fetch(`${url}/v1/models/register`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ alias: "bad alias!", model_name: "x" }),
    });
    expect(response.status).toBe(400);
    const body = (await response.json()) as { error: { param: string } };
    expect(body.error.param).toBe("alias");
  });

  test("calls to agents never follow a redirect, and no worker may advertise the manager itself", async () => {
    const followed: string[] = [];
    const recorder = Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      fetch(request) {
        followed.push(`${request.method} ${new URL(request.url).pathname}`);
        return Response.json({}, { status: 202 });
      },
    });
    const redirector = Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      fetch: (request) =>
        new Response(null, {
          status: 307,
          headers: {
            location: `http://127.0.0.1:${recorder.port}${new URL(request.url).pathname}`,
          },
        }),
    });
    const register = (workerId: string, workerUrl: string) =>
      fetch(`${url}/v1/workers/register`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({
          worker_id: workerId,
          worker_url: workerUrl,
          gpu_info: { gpus: [gpu(0)] },
          agent_version: "test",
        }),
      });
    try {
      expect((await register("node-redirect", `http://127.0.0.1:${redirector.port}`)).status).toBe(
        200,
      );
      const placed = await fetch(`${url}/v1/models/register`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ alias: "node-m", model_name: "org/m", worker_id: "node-redirect" }),
      });
      expect(placed.status).toBe(201);
      const model = (await placed.json()) as {
        instances: { status: string; last_error: string }[];
      };
      expect(model.instances[0]?.status).toBe("failed");
      expect(model.instances[0]?.last_error).toContain("answered a redirect (307)");
      expect(followed).toEqual([]);

      // The port Node bound, in two spellings.
      const port = new URL(url).port;
      for (const self of [`http://127.0.0.1:${port}`, `http://localhost:${port}/`]) {
        const refused = await register("node-self", self);
        expect(refused.status).toBe(400);
        const body = (await refused.json()) as { error: { param: string; message: string } };
        expect(body.error.param).toBe("worker_url");
        expect(body.error.message).toContain("this manager's own address");
      }
    } finally {
      recorder.stop(true);
      redirector.stop(true);
    }
  });
});
