import { afterAll, beforeAll, expect, test } from "bun:test";
import type { Server } from "bun";
import type { ModelInfo } from "../../../protocol/index.ts";
import { describeApi } from "./harness.ts";

/**
 * The manager's calls to agents (launch, list, logs, stop) never follow a redirect: a worker
 * answering 307 to another listener gets an error, and the listener is never reached (with
 * 307 the credential and the launch body would go with it).
 */
let recorder: Server<undefined>;
let redirector: Server<undefined>;
const followed: string[] = [];
let bounced: string[] = [];

beforeAll(() => {
  recorder = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    fetch(request) {
      followed.push(`${request.method} ${new URL(request.url).pathname}`);
      return Response.json({ instances: [] }, { status: 202 });
    },
  });
  redirector = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    fetch(request) {
      const path = new URL(request.url).pathname;
      bounced.push(`${request.method} ${path}`);
      return new Response(null, {
        status: 307,
        headers: { location: `http://127.0.0.1:${recorder.port}${path}` },
      });
    },
  });
});
afterAll(() => {
  recorder?.stop(true);
  redirector?.stop(true);
});

describeApi("manager → agent calls and redirects", (api) => {
  test("launch, logs and stop against a redirecting agent fail, and the redirect is not followed", async () => {
    const t = await api.manager();
    bounced = [];
    await api.register({ url: `http://127.0.0.1:${redirector.port}` }, "w1");

    const placed = await api.model({ alias: "m" });
    expect(placed.status).toBe(201);
    const instance = placed.body.instances[0];
    expect(instance?.status).toBe("failed");
    expect(instance?.last_error).toContain("answered a redirect (307)");

    const logs = await t.call("GET", "/v1/models/m/logs?tail=5");
    expect(logs.status).toBe(200);
    expect(await logs.text()).toContain("answered a redirect (307)");

    const deleted = await t.json<{ stopped: { worker_id: string; ok: boolean; error?: string }[] }>(
      "DELETE",
      "/v1/models/m",
    );
    expect(deleted.body.stopped).toEqual([
      { worker_id: "w1", ok: false, error: expect.stringContaining("redirect (307)") },
    ]);

    // The manager's probes of the worker (`GET /health`) are redirected too, and not followed.
    expect(bounced.filter((call) => call !== "GET /health")).toEqual([
      "POST /v1/instances",
      "GET /v1/instances/m/logs",
      "DELETE /v1/instances/m",
    ]);
    expect(followed).toEqual([]);
    expect((await t.json<ModelInfo>("GET", "/v1/models/m")).status).toBe(404);
  });
});
