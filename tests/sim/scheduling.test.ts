import { afterAll, describe, expect, test } from "bun:test";
import { metricAt } from "../../devkit/metrics.ts";
import { eventually } from "../../devkit/net.ts";
import { stopAll } from "../../devkit/proc.ts";
import { startSim } from "./sim-helpers.ts";

afterAll(stopAll);

const slowChat = (content: string) =>
  JSON.stringify({
    model: "m",
    messages: [{ role: "user", content }],
    max_tokens: 400,
    ignore_eos: true,
  });

describe("engine simulator: scheduling", () => {
  test("runs at most max-num-seqs and queues the rest, never rejecting", async () => {
    // 400 tokens at 10 ms ≈ 4 s per request: long enough to observe the queue.
    const sim = await startSim([
      "--served-model-name",
      "m",
      "--max-num-seqs",
      "2",
      "--time-to-first-token",
      "0",
      "--inter-token-latency",
      "10",
    ]);
    const controllers = Array.from({ length: 5 }, () => new AbortController());
    const finished: number[] = [];
    const aborted: number[] = [];
    const statuses: number[] = [];
    // Each request either completes or is aborted by the test; anything else fails the test
    // (the status is checked below, outside the promise chain).
    const requests = controllers.map((controller, index) =>
      fetch(`${sim.base}/v1/chat/completions`, {
        method: "POST",
        body: slowChat(`req ${index}`),
        signal: controller.signal,
      })
        .then(async (response) => {
          statuses.push(response.status);
          await response.json();
          finished.push(index);
        })
        .catch((error: unknown) => {
          if (!controller.signal.aborted) throw error;
          aborted.push(index);
        }),
    );
    await eventually(
      async () =>
        (await metricAt(`${sim.base}/metrics`, "vllm:num_requests_running")) === 2 &&
        (await metricAt(`${sim.base}/metrics`, "vllm:num_requests_waiting")) === 3,
      { what: "2 running and 3 waiting" },
    );
    // Cancelling a queued request removes it from the queue and counts it as abort.
    controllers[4]?.abort();
    await eventually(
      async () => (await metricAt(`${sim.base}/metrics`, "vllm:num_requests_waiting")) === 2,
      {
        what: "aborted request left the queue",
      },
    );
    expect(
      await metricAt(`${sim.base}/metrics`, "vllm:request_success_total", {
        finished_reason: "abort",
      }),
    ).toBe(1);
    for (const controller of controllers.slice(0, 2)) controller.abort();
    // The two still queued (2 and 3) take the freed slots.
    await eventually(
      async () =>
        (await metricAt(`${sim.base}/metrics`, "vllm:num_requests_running")) === 2 &&
        (await metricAt(`${sim.base}/metrics`, "vllm:num_requests_waiting")) === 0,
      { what: "queue advanced after aborts" },
    );
    controllers[3]?.abort();
    await Promise.all(requests);
    expect(statuses.every((status) => status === 200)).toBe(true);
    expect(aborted.toSorted((a, b) => a - b)).toEqual([0, 1, 3, 4]);
    expect(await metricAt(`${sim.base}/metrics`, "vllm:num_requests_running")).toBe(0);
    expect(finished).toEqual([2]);
    expect(
      await metricAt(`${sim.base}/metrics`, "vllm:request_success_total", {
        finished_reason: "abort",
      }),
    ).toBe(4);
    expect(
      await metricAt(`${sim.base}/metrics`, "vllm:request_success_total", {
        finished_reason: "length",
      }),
    ).toBe(1);
  }, 30_000);

  test("queued requests start in arrival order", async () => {
    const sim = await startSim([
      "--served-model-name",
      "m",
      "--max-num-seqs",
      "1",
      "--time-to-first-token",
      "0",
      "--inter-token-latency",
      "5",
    ]);
    const order: number[] = [];
    const send = (index: number) =>
      fetch(`${sim.base}/v1/completions`, {
        method: "POST",
        body: JSON.stringify({
          model: "m",
          prompt: String(index),
          max_tokens: 30,
          ignore_eos: true,
        }),
      }).then(async (response) => {
        await response.json();
        order.push(index);
      });
    const pending: Promise<void>[] = [];
    for (let index = 0; index < 4; index++) {
      pending.push(send(index));
      // Arrival order must be unambiguous: wait until the engine has seen this one.
      await eventually(
        async () =>
          (await metricAt(`${sim.base}/metrics`, "vllm:num_requests_running")) +
            (await metricAt(`${sim.base}/metrics`, "vllm:num_requests_waiting")) ===
          index + 1 - order.length,
        { what: `request ${index} arrived` },
      );
    }
    await Promise.all(pending);
    expect(order).toEqual([0, 1, 2, 3]);
  });

  test("a client that drops a stream aborts it at once: running falls and abort is counted", async () => {
    const sim = await startSim([
      "--served-model-name",
      "m",
      "--time-to-first-token",
      "0",
      "--inter-token-latency",
      "20",
    ]);
    const controller = new AbortController();
    const response = await fetch(`${sim.base}/v1/chat/completions`, {
      method: "POST",
      body: JSON.stringify({
        model: "m",
        stream: true,
        messages: [{ role: "user", content: "x" }],
        max_tokens: 500,
        ignore_eos: true,
      }),
      signal: controller.signal,
    });
    const reader = response.body?.getReader();
    const first = await reader?.read();
    expect(new TextDecoder().decode(first?.value)).toStartWith("data: ");
    expect(await metricAt(`${sim.base}/metrics`, "vllm:num_requests_running")).toBe(1);
    controller.abort();
    await eventually(
      async () => (await metricAt(`${sim.base}/metrics`, "vllm:num_requests_running")) === 0,
      {
        what: "running back to 0",
        timeoutMs: 5000,
      },
    );
    expect(
      await metricAt(`${sim.base}/metrics`, "vllm:request_success_total", {
        finished_reason: "abort",
      }),
    ).toBe(1);
    // A partial stream still counts the tokens that were generated before the abort.
    expect(await metricAt(`${sim.base}/metrics`, "vllm:generation_tokens_total")).toBeGreaterThan(
      0,
    );
    expect(await metricAt(`${sim.base}/metrics`, "vllm:generation_tokens_total")).toBeLessThan(500);
  });

  test("streams pace tokens at the inter-token latency after the first token", async () => {
    const sim = await startSim([
      "--served-model-name",
      "m",
      "--time-to-first-token",
      "100",
      "--inter-token-latency",
      "50",
    ]);
    const started = performance.now();
    const response = await fetch(`${sim.base}/v1/completions`, {
      method: "POST",
      body: JSON.stringify({
        model: "m",
        prompt: "p",
        stream: true,
        max_tokens: 10,
        ignore_eos: true,
      }),
    });
    const text = await response.text();
    const elapsed = performance.now() - started;
    expect(text.match(/"text"/g)?.length).toBe(10);
    // 100 ms + 9 × 50 ms = 550 ms; generous upper bound for a loaded machine.
    expect(elapsed).toBeGreaterThanOrEqual(500);
    expect(elapsed).toBeLessThan(5000);
  });
});
