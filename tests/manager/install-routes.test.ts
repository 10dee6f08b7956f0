import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import type { OpenAiError } from "../../protocol/index.ts";
import { type TestManager, testManager } from "./helpers.ts";

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
