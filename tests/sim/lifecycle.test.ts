import { afterAll, describe, expect, test } from "bun:test";
import OpenAI from "openai";
import { freePort, waitForHttp } from "../../devkit/net.ts";
import { startProcess, stopAll } from "../../devkit/proc.ts";
import { startSim } from "./sim-helpers.ts";

afterAll(stopAll);

describe("engine simulator: lifecycle", () => {
  test("agent/sim/vllm takes vLLM's argv, refuses connections until loaded, then logs like vLLM", async () => {
    const port = await freePort();
    const service = startProcess(
      [
        "agent/sim/vllm",
        "serve",
        "/models/llama",
        "--host",
        "127.0.0.1",
        "--port",
        String(port),
        "--served-model-name",
        "llama8b",
        "--max-model-len",
        "8192",
        "--gpu-memory-utilization",
        "0.45",
        "--tensor-parallel-size",
        "2",
        "--dtype",
        "auto",
        "--enable-chunked-prefill",
        "--swap-space",
        "4",
      ],
      { env: { SIM_STARTUP_DELAY_MS: "1500" } },
    );
    await service.waitFor("non-default args");
    const early = await fetch(`http://127.0.0.1:${port}/health`).then(
      (response) => `HTTP ${response.status}`,
      (error: unknown) => String(error),
    );
    expect(early).not.toMatch(/HTTP/);
    await waitForHttp(`http://127.0.0.1:${port}/health`);
    const health = await fetch(`http://127.0.0.1:${port}/health`);
    expect(health.status).toBe(200);
    expect(await health.text()).toBe("");
    expect(service.output()).toContain(`Starting vLLM server on http://127.0.0.1:${port}`);
    expect(service.output()).toContain("Application startup complete.");
    expect(service.output()).toMatch(
      /ignoring vLLM flags.*--enable-chunked-prefill.*--swap-space 4/,
    );
    const models = (await (await fetch(`http://127.0.0.1:${port}/v1/models`)).json()) as {
      data: { id: string; max_model_len: number }[];
    };
    expect(models.data).toEqual([expect.objectContaining({ id: "llama8b", max_model_len: 8192 })]);
  });

  test("SIGTERM exits within a second", async () => {
    const sim = await startSim();
    const started = performance.now();
    const code = await sim.service.stop("SIGTERM", 5000);
    expect(code).toBe(0);
    expect(performance.now() - started).toBeLessThan(1000);
  });

  test("--fail-startup prints a CUDA OOM error and exits 1 without listening", async () => {
    const sim = await startSim([], { env: { SIM_FAIL_STARTUP: "1" }, wait: false });
    const code = await sim.service.exited();
    expect(code).toBe(1);
    expect(sim.service.output()).toContain("CUDA out of memory");
    expect(sim.service.output()).not.toContain("Application startup complete.");
  });

  test("SIM_EXIT_AFTER_MS makes a running engine die with a non-zero code", async () => {
    const sim = await startSim([], { env: { SIM_EXIT_AFTER_MS: "1500" } });
    expect((await fetch(`${sim.base}/health`)).status).toBe(200);
    const code = await sim.service.exited();
    expect(code).not.toBe(0);
    expect(sim.service.output()).toMatch(/died unexpectedly/);
  });

  test("--api-key protects /v1 but not /health or /metrics", async () => {
    const sim = await startSim(["--api-key", "sekret"]);
    const anonymous = await fetch(`${sim.base}/v1/models`);
    expect(anonymous.status).toBe(401);
    expect(await anonymous.json()).toEqual({ error: "Unauthorized" });
    const wrong = await fetch(`${sim.base}/v1/models`, {
      headers: { authorization: "Bearer nope" },
    });
    expect(wrong.status).toBe(401);
    const right = await fetch(`${sim.base}/v1/models`, {
      headers: { authorization: "Bearer sekret" },
    });
    expect(right.status).toBe(200);
    expect((await fetch(`${sim.base}/health`)).status).toBe(200);
    expect((await fetch(`${sim.base}/metrics`)).status).toBe(200);
    const sdk = new OpenAI({ baseURL: `${sim.base}/v1`, apiKey: "wrong", maxRetries: 0 });
    const error = await sdk.models.list().catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(OpenAI.AuthenticationError);
    const good = new OpenAI({ baseURL: `${sim.base}/v1`, apiKey: "sekret", maxRetries: 0 });
    expect((await good.models.list()).data).toHaveLength(1);
  });

  test("failure injection answers 500 at the configured rate; x-sim-error forces a status", async () => {
    const sim = await startSim(["--failure-rate", "100", "--served-model-name", "m"]);
    const body = JSON.stringify({ model: "m", messages: [{ role: "user", content: "x" }] });
    const failed = await fetch(`${sim.base}/v1/chat/completions`, { method: "POST", body });
    expect(failed.status).toBe(500);
    expect(((await failed.json()) as { error: { code: number } }).error.code).toBe(500);
    const healthy = await startSim(["--served-model-name", "m"]);
    const forced = await fetch(`${healthy.base}/v1/chat/completions`, {
      method: "POST",
      body,
      headers: { "x-sim-error": "503" },
    });
    expect(forced.status).toBe(503);
  });

  test("bad flags stop the simulator with a usage error", async () => {
    const sim = await startSim(["--max-num-seqs", "zero"], { wait: false });
    expect(await sim.service.exited()).toBe(2);
    expect(sim.service.output()).toContain("--max-num-seqs");
  });
});
