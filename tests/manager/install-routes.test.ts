import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import type { InstallCommandReply, OpenAiError } from "../../protocol/index.ts";
import { FLEET, type TestManager, testManager } from "./helpers.ts";

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
