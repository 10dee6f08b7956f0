import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { WorkerService } from "../../agent/service.ts";
import { createLogger } from "../../kit/log.ts";
import { type InstanceReport, launchPhases } from "../../protocol/index.ts";
import { call, enginePortRange, joinedDataDir, simPath, simVllm, twoH100 } from "./helpers.ts";

setDefaultTimeout(60_000);

const joinToken = "launch-progress-join-token";
const token = "fa_launch-progress-agent-credential";
const managerUrl = "http://127.0.0.1:9";
let agent: WorkerService;

beforeAll(async () => {
  agent = new WorkerService({
    workerId: "launch-progress",
    listenHost: "127.0.0.1",
    listenPort: 0,
    managerUrl,
    fleetToken: joinToken,
    dataDir: joinedDataDir({ workerId: "launch-progress", managerUrl, agentToken: token }),
    vllmBin: simVllm,
    enginePorts: await enginePortRange(),
    startupTimeoutMs: 30_000,
    stopGraceMs: 2000,
    healthPollMs: 50,
    engineEnv: { ...process.env, PATH: simPath, SIM_GPUS: twoH100 },
    log: createLogger({ service: "agent", level: "error" }),
  });
  await agent.run();
});

afterAll(async () => {
  await agent.stop();
});

describe("agent: launch progress", () => {
  test("a paced startup shows the phases in order, with rising percentages, then ready", async () => {
    const res = await call(`${agent.url}/v1/instances`, {
      token,
      body: {
        alias: "paced",
        model_name: "/models/paced",
        // 4 s: a tenth downloading, the shard bar over 8 shards, then the rest.
        extra_args: [
          "--startup-delay",
          "4000",
          "--startup-phases",
          "downloading=10,loading_weights=30",
          "--startup-shards",
          "8",
        ],
      },
    });
    expect(res.status).toBe(202);
    const samples: NonNullable<InstanceReport["progress"]>[] = [];
    let last: InstanceReport | undefined;
    while (last?.status !== "ready") {
      const { json } = await call(`${agent.url}/v1/instances/paced`, { token });
      last = json;
      if (json.progress) samples.push(json.progress);
      expect(json.status === "failed" ? json.last_error : json.status).not.toBe("failed");
      if (json.status === "failed") throw new Error(json.last_error ?? "failed");
      await Bun.sleep(25);
    }
    const seen = [...new Set(samples.map((s) => s.phase))];
    // Every phase of a compiled launch with a download, in the protocol's order.
    expect(seen).toEqual(launchPhases.filter((p) => seen.includes(p)));
    for (const phase of ["downloading", "loading_weights", "capturing_graphs", "ready"] as const) {
      expect(seen).toContain(phase);
    }
    const shards = samples
      .filter((s) => s.phase === "loading_weights" && s.percent !== null)
      .map((s) => s.percent as number);
    expect(new Set(shards).size).toBeGreaterThan(2);
    expect(shards).toEqual([...shards].sort((a, b) => a - b));
    expect(samples.some((s) => s.phase === "loading_weights" && s.eta_s !== null)).toBe(true);
    const elapsed = samples.map((s) => s.elapsed_s);
    expect(elapsed).toEqual([...elapsed].sort((a, b) => a - b));
    const done = last.progress;
    expect(done).toMatchObject({ phase: "ready", percent: 100, eta_s: 0, kv_cache_tokens: 65_536 });
    // The finished phases and their durations add up to the launch.
    const phases = done?.phases ?? [];
    expect(phases.map((p) => p.phase)).toEqual(
      launchPhases.filter((p) => p !== "ready" && phases.some((d) => d.phase === p)),
    );
    const sum = phases.reduce((acc, p) => acc + p.duration_s, 0);
    expect(Math.abs(sum - (done?.elapsed_s ?? 0))).toBeLessThan(0.5);
    expect(done?.elapsed_s).toBeGreaterThanOrEqual(4);
  });
});
