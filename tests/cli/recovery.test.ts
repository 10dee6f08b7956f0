import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createTestDatabase, serviceDbTarget, type TestDatabase } from "../../devkit/db.ts";
import { type Running, simDir, startAgent, startManager } from "../../devkit/fleet.ts";
import { eventually } from "../../devkit/net.ts";
import { bunBin, startProcess, stopAll } from "../../devkit/proc.ts";

setDefaultTimeout(90_000);

const ADMIN_TOKEN = "admin-token-cli-recovery";
const FLEET_TOKEN = "fleet-token-cli-recovery";
// A failed engine is retried 2 s later (then 4 s, …): soon enough to follow in a test.
const managerEnv = { ADMIN_TOKEN, FLEET_TOKEN, LAUNCH_RETRY_BASE_S: "2" };

const occurrences = (text: string, part: string) => text.split(part).length - 1;

describe(`fleet CLI: waiting through failures and manager restarts (${serviceDbTarget})`, () => {
  let database: TestDatabase;
  let manager: Running;
  const dir = mkdtempSync(join(tmpdir(), "fleet-cli-recovery-"));
  /** While this file exists, engines fail to start (as vLLM does on a GPU another process holds). */
  const failFlag = join(dir, "engines-fail");

  const fleet = (args: string[]) =>
    startProcess([bunBin, "bin/fleet.ts", ...args], {
      env: { FLEET_URL: manager.url, ADMIN_TOKEN },
    });
  async function run(args: string[]) {
    const service = fleet(args);
    const code = await service.exited();
    return { code, output: service.output() };
  }

  beforeAll(async () => {
    database = await createTestDatabase();
    manager = await startManager({ database, env: managerEnv });
    const vllm = join(dir, "vllm");
    writeFileSync(
      vllm,
      `#!/usr/bin/env bash\n[ -e "${failFlag}" ] && export SIM_FAIL_STARTUP=1\nexec "${simDir}/vllm" "$@"\n`,
      { mode: 0o755 },
    );
    await startAgent({
      managerUrl: manager.url,
      workerId: "gpu-flaky",
      env: {
        FLEET_TOKEN,
        VLLM_BIN: vllm,
        SIM_GPUS: "2x NVIDIA H100 80GB HBM3:81559",
        SIM_STARTUP_DELAY_MS: "500",
      },
    });
    await eventually(async () => {
      const response = await fetch(`${manager.url}/v1/workers/gpu-flaky`, {
        headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
      });
      return response.ok;
    });
  });
  afterAll(async () => {
    await stopAll();
    await database?.destroy();
    rmSync(dir, { recursive: true, force: true });
  });

  test("register --wait shows a failure once, then follows the manager's retry to ready", async () => {
    writeFileSync(failFlag, "");
    const register = fleet([
      "models",
      "register",
      "flaky",
      "org/flaky",
      "--gpu-memory-utilization",
      "0.3",
      "--wait",
      "--timeout",
      "60",
    ]);
    await register.waitFor("following the retry", 20_000);
    // The cause goes away before the retry (2 s after the failure) starts the engine again.
    rmSync(failFlag);
    expect(await register.exited()).toBe(0);
    const output = register.output();
    expect(output).toMatch(/gpu-flaky: failed while compiling: engine exited with code 1/);
    expect(output).toMatch(/the manager will retry it in about 0:0\d/);
    // Explained once, though the model stays failed over several polls until the retry.
    expect(occurrences(output, "CUDA out of memory")).toBe(1);
    expect(occurrences(output, "the manager will retry it")).toBe(1);
    expect(output).toMatch(/gpu-flaky: ready \(port \d+\)/);
    expect(output).toMatch(
      /flaky\s+org\/flaky\s+gpu-flaky\s+http:\/\/127\.0\.0\.1:\d+\s+\d+\s+yes/,
    );
  });

  test("models wait and logs --follow ride out a manager restart", async () => {
    const follow = fleet(["logs", "flaky", "--follow"]);
    await follow.waitFor("Application startup complete.", 20_000);
    const registered = await run([
      "models",
      "register",
      "slow",
      "org/slow",
      "--gpu-memory-utilization",
      "0.3",
      "--extra-arg=--startup-delay=8000",
    ]);
    expect(registered.code).toBe(0);
    const wait = fleet(["models", "wait", "slow", "--timeout", "60"]);
    await wait.waitFor(/gpu-flaky: (launching|loading|starting)/, 20_000);

    await manager.stop();
    await wait.waitFor("cannot reach the manager", 10_000);
    await follow.waitFor("cannot reach the manager", 10_000);
    manager = await startManager({ database, port: manager.port, env: managerEnv });

    expect(await wait.exited()).toBe(0);
    const waited = wait.output();
    expect(occurrences(waited, "cannot reach the manager")).toBe(1);
    expect(waited).toContain("still trying (Ctrl-C to stop)");
    expect(waited).toMatch(/answered again after \d+:\d\d/);
    expect(waited).toMatch(/gpu-flaky: ready \(port \d+\)/);

    await follow.waitFor("answered again", 20_000);
    expect(follow.proc.exitCode).toBeNull();
    expect((await run(["models", "rm", "flaky"])).code).toBe(0);
    expect(await follow.exited()).toBe(0);
    const followed = follow.output();
    expect(occurrences(followed, "cannot reach the manager")).toBe(1);
    expect(followed).toContain("[fleet] flaky is gone from gpu-flaky");
  });

  test("a manager that does not answer the first request is a failed request: exit 1 at once", async () => {
    await manager.stop();
    for (const args of [
      ["models", "ls"],
      ["models", "wait", "slow"],
    ]) {
      const { code, output } = await run(args);
      expect(code).toBe(1);
      // One line, and no waiting: a wrong FLEET_URL is not a restart to wait out.
      expect(output).toStartWith(`fleet: cannot reach the manager at ${manager.url}: `);
      expect(output.trim().split("\n")).toHaveLength(1);
    }
  });
});
