import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { createTestDatabase, serviceDbTarget, type TestDatabase } from "../../devkit/db.ts";
import { type Running, startAgent, startManager } from "../../devkit/fleet.ts";
import { eventually } from "../../devkit/net.ts";
import { bunBin, repoRoot, startProcess, stopAll } from "../../devkit/proc.ts";

setDefaultTimeout(90_000);

const ADMIN_TOKEN = "admin-token-cli-progress";
const FLEET_TOKEN = "fleet-token-cli-progress";

/** util-linux `script` runs a command in a pseudo-terminal (as a person's shell would). */
const hasScript = Bun.spawnSync(["script", "--version"], {
  stdout: "ignore",
  stderr: "ignore",
}).success;

describe(`fleet CLI: launch progress and following logs (${serviceDbTarget})`, () => {
  let database: TestDatabase;
  let manager: Running;

  const env = () => ({ FLEET_URL: manager.url, ADMIN_TOKEN });
  async function fleet(args: string[]) {
    const service = startProcess([bunBin, "bin/fleet.ts", ...args], { env: env() });
    const code = await service.exited();
    return { code, output: service.output() };
  }

  beforeAll(async () => {
    database = await createTestDatabase();
    manager = await startManager({
      database,
      env: { ADMIN_TOKEN, FLEET_TOKEN, HEARTBEAT_INTERVAL_S: "0.3", LAUNCH_RETRY_BASE_S: "60" },
    });
    await startAgent({
      managerUrl: manager.url,
      workerId: "gpu-progress",
      env: {
        FLEET_TOKEN,
        SIM_GPUS: "4x NVIDIA H100 80GB HBM3:81559",
        // Each engine takes 3 s to start, most of it loading weights and capturing graphs.
        SIM_STARTUP_DELAY_MS: "3000",
        SIM_STARTUP_PHASES: "loading_weights=40,capturing_graphs=30",
        SIM_STARTUP_SHARDS: "8",
        SIM_ACCESS_LOG: "1",
      },
    });
    await eventually(async () => {
      const response = await fetch(`${manager.url}/v1/workers/gpu-progress`, {
        headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
      });
      return response.ok;
    });
  });
  afterAll(async () => {
    await stopAll();
    await database?.destroy();
  });

  test("register --wait without a terminal prints one plain line per phase, in order", async () => {
    const { code, output } = await fleet([
      "models",
      "register",
      "plain",
      "org/plain-8b",
      "--gpu-memory-utilization",
      "0.2",
      "--wait",
    ]);
    expect(code).toBe(0);
    // Nothing drawn in place: no cursor movement, no bar.
    expect(output).not.toContain("\x1b[");
    const lines = output
      .split("\n")
      .filter((line) => line.startsWith("gpu-progress: ") && !line.includes("placed on GPU"));
    const order = [
      "launching",
      "loading",
      "starting",
      "downloading",
      "loading weights",
      "compiling",
      "profiling",
      "capturing graphs",
      "starting API server",
      "ready",
    ];
    // A phase shorter than the poll may be missed; those seen come in launch order.
    const stateOf = (line: string) =>
      order
        .filter((state) => line.startsWith(`gpu-progress: ${state}`))
        .sort((a, b) => b.length - a.length)[0];
    const seen = lines.map((line) => order.indexOf(stateOf(line) ?? "?"));
    expect(seen).not.toContain(-1);
    expect(seen).toEqual([...seen].sort((a, b) => a - b));
    expect(seen).toContain(order.indexOf("loading weights"));
    expect(seen.at(-1)).toBe(order.indexOf("ready"));
    expect(output).toMatch(/gpu-progress: loading weights( \d+%)?.*\(elapsed \d+:\d\d/);
    expect(output).toMatch(/gpu-progress: ready \(port \d+\) after \d+:\d\d/);
    // Each line is printed once: a phase is not repeated while it lasts.
    expect(new Set(lines).size).toBe(lines.length);
  });

  test.if(hasScript)(
    "models wait on a terminal redraws one live line: phase, bar, elapsed, ETA, last log line",
    async () => {
      expect(
        (
          await fleet([
            "models",
            "register",
            "live",
            "org/live-8b",
            "--gpu-memory-utilization",
            "0.2",
          ])
        ).code,
      ).toBe(0);
      const script = startProcess(
        ["script", "-qfec", `${bunBin} ${repoRoot}/bin/fleet.ts models wait live`, "/dev/null"],
        { env: env() },
      );
      expect(await script.exited()).toBe(0);
      const output = script.output();
      // Redrawn in place: the line is cleared and the cursor goes back up to redraw it.
      expect(output).toContain("\x1b[2K");
      expect(output).toContain("\x1b[1F");
      const frames = output.split("\x1b[2K").slice(1);
      const weights = frames.find((f) => /loading weights\s+\[█+·*\]\s+\d+%/.test(f));
      expect(weights).toBeDefined();
      expect(weights).toMatch(/\d:\d\d\s+(phase )?ETA (\d+:\d\d|\?)/);
      expect(weights).toContain("│ ");
      expect(frames.some((f) => f.includes("capturing graphs"))).toBe(true);
      expect(frames.at(-1)).toMatch(/^gpu-progress\s+ready \(port \d+\) in \d+:\d\d/);
      expect(output).toMatch(/ALIAS\s+MODEL\s+WORKER/);
    },
  );

  test("register --wait on an engine that cannot start: its last log lines once, and the retry", async () => {
    const { code, output } = await fleet([
      "models",
      "register",
      "broken",
      "org/broken",
      "--gpu-memory-utilization",
      "0.2",
      "--extra-arg=--fail-startup",
      "--wait",
      "--timeout",
      "30",
    ]);
    // The retry comes 60 s later, after --timeout: not worth waiting for.
    expect(code).toBe(1);
    // The simulator fails where vLLM runs out of memory, after torch.compile's lines.
    expect(output).toMatch(/gpu-progress: failed while compiling: engine exited with code 1/);
    expect(output.split("CUDA out of memory").length - 1).toBe(1);
    expect(output).toMatch(/the manager will retry it in about \d+:\d\d/);
    expect((await fleet(["models", "rm", "broken"])).code).toBe(0);
  });

  test("logs --follow sees a new line, and ends when the instance goes away", async () => {
    const follow = startProcess([bunBin, "bin/fleet.ts", "logs", "plain", "--follow"], {
      env: env(),
    });
    await follow.waitFor("Application startup complete.", 20_000);
    expect(follow.output()).not.toContain("/v1/chat/completions");
    const chat = await fetch(`${manager.url}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: "plain", messages: [{ role: "user", content: "hello" }] }),
    });
    expect(chat.status).toBe(200);
    // The engine's access line for that request arrives through the follow.
    await follow.waitFor('"POST /v1/chat/completions HTTP/1.1" 200', 20_000);

    expect((await fleet(["models", "rm", "plain"])).code).toBe(0);
    expect(await follow.exited()).toBe(0);
    expect(follow.output()).toContain("[fleet] plain is gone from gpu-progress");
  });

  test("logs --follow stops on Ctrl-C", async () => {
    const follow = startProcess([bunBin, "bin/fleet.ts", "logs", "live", "--follow"], {
      env: env(),
    });
    await follow.waitFor("Application startup complete.", 20_000);
    follow.proc.kill("SIGINT");
    expect(await follow.exited()).toBe(0);
  });
});
