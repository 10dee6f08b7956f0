import { afterAll, describe, expect, test } from "bun:test";
import { runLoad, runStreams } from "../../bench/lib/load.ts";
import { stopAll } from "../../devkit/proc.ts";
import { startSim } from "./sim-helpers.ts";

afterAll(stopAll);

describe("bench/lib load generator", () => {
  test("counts requests, statuses and latency against the simulator", async () => {
    const sim = await startSim([
      "--served-model-name",
      "m",
      "--time-to-first-token",
      "0",
      "--inter-token-latency",
      "0",
    ]);
    const ok = await runLoad({
      url: `${sim.base}/v1/chat/completions`,
      body: { model: "m", messages: [{ role: "user", content: "hi" }] },
      concurrency: 4,
      requests: 200,
    });
    expect(ok.requests).toBe(200);
    expect(ok.errors).toBe(0);
    expect(ok.statuses[200]).toBe(200);
    expect(ok.latencyMs.p99).toBeGreaterThan(0);
    const missing = await runLoad({ url: `${sim.base}/v1/nothing`, concurrency: 2, requests: 10 });
    expect(missing.non2xx).toBe(10);
    expect(missing.statuses[404]).toBe(10);
  });

  test("streams: counts SSE events per stream and measures TTFB and gaps", async () => {
    const sim = await startSim([
      "--served-model-name",
      "m",
      "--time-to-first-token",
      "30",
      "--inter-token-latency",
      "10",
    ]);
    const result = await runStreams({
      url: `${sim.base}/v1/chat/completions`,
      body: {
        model: "m",
        stream: true,
        max_tokens: 10,
        ignore_eos: true,
        messages: [{ role: "user", content: "x" }],
      },
      concurrency: 3,
      requests: 6,
    });
    expect(result.streams).toBe(6);
    expect(result.errors).toBe(0);
    // role chunk + 10 tokens + [DONE] per stream (role and first token arrive together).
    expect(result.events).toBe(6 * 12);
    expect(result.ttfbMs.p50).toBeGreaterThanOrEqual(25);
    expect(result.gapMs.p50).toBeGreaterThan(5);
  });

  test("a server that is down shows up as errors, and the run still ends", async () => {
    const result = await runLoad({
      url: "http://127.0.0.1:9/none",
      concurrency: 2,
      requests: 4,
      timeoutMs: 1000,
    });
    expect(result.errors).toBe(4);
  });
});
