import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { createTestDatabase, serviceDbTarget, type TestDatabase } from "../../devkit/db.ts";
import { freePort, waitForHttp } from "../../devkit/net.ts";
import { type Service, startProcess, stopAll } from "../../devkit/proc.ts";

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
      env: { DATABASE_URL: "", ...database.env, HOST: "127.0.0.1", PORT: String(port) },
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
});
