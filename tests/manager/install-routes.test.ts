import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import type { InstallCommandReply, OpenAiError } from "../../protocol/index.ts";
import { FLEET, registration, type TestManager, testManager } from "./helpers.ts";

describe("install routes without an agent executable", () => {
  let t: TestManager;
  beforeAll(async () => {
    t = await testManager();
  });
  afterAll(async () => {
    await t.close();
  });

  test("GET /downloads/fleet-agent is 404 saying how to build one", async () => {
    const { status, body } = await t.json<OpenAiError>("GET", "/downloads/fleet-agent", {
      token: null,
    });
    expect(status).toBe(404);
    expect(body.error.message).toContain("npm run build:agent");
    expect(body.error.message).toContain("AGENT_BINARY");
  });

  test("GET /install.sh answers a script that says so and fails, so `curl | sh` does not pass silently", async () => {
    const response = await t.call("GET", "/install.sh", { token: null });
    expect(response.status).toBe(200);
    expect(response.headers.get("content-type")).toStartWith("text/x-shellscript");
    const script = await response.text();
    expect(script).toStartWith("#!/bin/sh\n");
    expect(script).toContain("npm run build:agent");
    const run = Bun.spawnSync(["sh", "-c", script], { stderr: "pipe" });
    expect(run.exitCode).toBe(1);
    expect(run.stderr.toString()).toContain("no agent executable");
  });
});

describe("POST /v1/workers/install-command (fleet workers add)", () => {
  let t: TestManager;
  beforeAll(async () => {
    t = await testManager({ config: { publicUrl: "https://fleet.example.com" } });
  });
  afterAll(async () => {
    await t.close();
  });

  test("gives an admin the whole line: join token, worker id and the URL it is reached at", async () => {
    const { status, body } = await t.json<InstallCommandReply>(
      "POST",
      "/v1/workers/install-command",
      { body: { worker_id: "gpu-7", public_url: "https://u1-9507.seetacloud.com:8443" } },
    );
    expect(status).toBe(200);
    expect(body).toEqual({
      command: `curl -fsSL https://fleet.example.com/install.sh | FLEET_TOKEN=${FLEET} WORKER_ID=gpu-7 PUBLIC_URL=https://u1-9507.seetacloud.com:8443 sh`,
      manager_url: "https://fleet.example.com",
      agent_available: false,
    });
  });

  test("a host on the manager's network gets WORKER_URL instead", async () => {
    const { body } = await t.json<InstallCommandReply>("POST", "/v1/workers/install-command", {
      body: { worker_id: "gpu-8", worker_url: "http://10.0.0.12:6006" },
    });
    expect(body.command).toEndWith("WORKER_ID=gpu-8 WORKER_URL=http://10.0.0.12:6006 sh");
  });

  test("a host with both URLs gets both: WORKER_URL for the manager, PUBLIC_URL for routers", async () => {
    const { body } = await t.json<InstallCommandReply>("POST", "/v1/workers/install-command", {
      body: {
        worker_id: "gpu-9",
        worker_url: "http://10.0.0.13:6006",
        public_url: "https://u1-9509.seetacloud.com:8443",
      },
    });
    expect(body.command).toEndWith(
      "WORKER_ID=gpu-9 WORKER_URL=http://10.0.0.13:6006 PUBLIC_URL=https://u1-9509.seetacloud.com:8443 sh",
    );
  });

  test("a worker id that has joined gets its line with a warning: it upgrades its own host, another host must wait for fleet workers rm", async () => {
    const fresh = await t.json<InstallCommandReply & { warning?: string }>(
      "POST",
      "/v1/workers/install-command",
      { body: { worker_id: "gpu-joined", public_url: "https://u1-9510.seetacloud.com:8443" } },
    );
    expect(fresh.body.warning).toBeUndefined();
    const joined = await t.register(registration("gpu-joined", "http://127.0.0.1:9", []));
    expect(joined.status).toBe(200);

    const again = await t.json<InstallCommandReply & { warning?: string }>(
      "POST",
      "/v1/workers/install-command",
      { body: { worker_id: "gpu-joined", public_url: "https://u1-9510.seetacloud.com:8443" } },
    );
    // The same line as before: re-run on its own host, it is the documented upgrade.
    expect([again.status, again.body.command]).toEqual([200, fresh.body.command]);
    expect(again.body.warning).toMatch(
      /^worker gpu-joined has already joined \(online, last heard from \d{4}-\d\d-\d\dT[\d:.]+Z\)\. On its own host, where its agent keeps its credential, this line upgrades the agent in place; on another host, or one whose agent data directory is gone, the join is refused \(409 already registered\): remove the worker first with fleet workers rm gpu-joined, or choose another worker id$/,
    );
    // What that other host would meet: the join's 409, which names the same way out.
    const elsewhere = await t.json<OpenAiError>("POST", "/v1/workers/register", {
      token: FLEET,
      body: registration("gpu-joined", "http://127.0.0.1:10", []),
    });
    expect(elsewhere.status).toBe(409);
    expect(elsewhere.body.error.message).toContain("fleet workers rm gpu-joined");

    // Removed, the id is free again: no warning.
    expect((await t.call("DELETE", "/v1/workers/gpu-joined")).status).toBe(200);
    const freed = await t.json<InstallCommandReply & { warning?: string }>(
      "POST",
      "/v1/workers/install-command",
      { body: { worker_id: "gpu-joined" } },
    );
    expect(freed.body.warning).toBeUndefined();
  });

  test("it holds the join token, so it takes the admin token; bad input is a 400 naming the field", async () => {
    const anonymous = await t.json<OpenAiError>("POST", "/v1/workers/install-command", {
      body: { worker_id: "gpu-7" },
      token: null,
    });
    expect(anonymous.status).toBe(401);
    expect(JSON.stringify(anonymous.body)).not.toContain(FLEET);
    const bad = await t.json<OpenAiError>("POST", "/v1/workers/install-command", {
      body: { worker_id: "gpu 7" },
    });
    expect(bad.status).toBe(400);
    expect(bad.body.error.param).toBe("worker_id");
  });
});

describe("POST /v1/workers/install-command in open mode", () => {
  test("a worker id that has registered gets no warning: without FLEET_TOKEN nothing is refused at join", async () => {
    const t = await testManager({ config: { fleetToken: undefined } });
    try {
      expect((await t.register(registration("gpu-open", "http://127.0.0.1:9", []))).status).toBe(
        200,
      );
      const { status, body } = await t.json<InstallCommandReply & { warning?: string }>(
        "POST",
        "/v1/workers/install-command",
        { body: { worker_id: "gpu-open", worker_url: "http://10.0.0.14:6006" } },
      );
      expect(status).toBe(200);
      expect(body.warning).toBeUndefined();
      expect(body.command).not.toContain("FLEET_TOKEN");
    } finally {
      await t.close();
    }
  });
});
