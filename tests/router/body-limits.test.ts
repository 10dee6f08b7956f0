import { describe, expect, test } from "bun:test";
import { createSimApp } from "../../agent/sim/app.ts";
import { parseServeArgs } from "../../agent/sim/config.ts";
import { metric } from "../../devkit/metrics.ts";
import { eventually } from "../../devkit/net.ts";
import type { RouteSnapshot } from "../../protocol/index.ts";
import { type AppDeps, createApp } from "../../router/app.ts";
import { BodyBudget } from "../../router/body.ts";
import { route } from "./route-entry.ts";

/**
 * What request bodies may cost the router, in process (`app.request`): the memory all bodies
 * being received may hold together (`maxBodyMemoryBytes`, 503 past it) and the deadline of
 * one body (`bodyTimeoutMs`, 408). The replica is the simulator's own fetch handler.
 * tests/router/slow-clients.test.ts does the same against router processes over TCP.
 */

const sim = createSimApp(
  parseServeArgs(
    ["serve", "org/qwen", "--served-model-name", "qwen", "--time-to-first-token", "0"],
    { SIM_FAIL_STARTUP: false, SIM_ACCESS_LOG: false },
  ),
);

function router(deps: Partial<AppDeps>) {
  const snapshot: RouteSnapshot = {
    version: "1",
    routes: [route({ alias: "qwen", workerId: "live", url: "http://live.test" })],
    api_keys: [],
  };
  const app = createApp({
    routes: { current: () => snapshot },
    usage: { record: () => {} },
    fetch: async (input, init) => sim.fetch(new Request(input, init)),
    ...deps,
  });
  const metrics = async () => (await app.request("/metrics")).text();
  return { app, metrics };
}

const encoder = new TextEncoder();

/** A chat completion padded with spaces to `size` bytes: valid JSON whatever the size. */
function chatBytes(size: number): Uint8Array<ArrayBuffer> {
  const json = JSON.stringify({
    model: "qwen",
    messages: [{ role: "user", content: "hi" }],
    max_tokens: 2,
  });
  return encoder.encode(json + " ".repeat(Math.max(0, size - json.length)));
}

/**
 * A body the test releases piece by piece: `send(bytes)` enqueues, `end()` closes. It is
 * what a client on a slow link (or one that stops sending) looks like to the router.
 */
function trickle() {
  let controller: ReadableStreamDefaultController<Uint8Array> | undefined;
  const stream = new ReadableStream<Uint8Array>({
    start(c) {
      controller = c;
    },
  });
  return {
    stream,
    send: (bytes: Uint8Array) => controller?.enqueue(bytes),
    end: () => controller?.close(),
  };
}

const post = (
  app: ReturnType<typeof createApp>,
  body: BodyInit,
  headers: Record<string, string> = {},
) =>
  app.request("/v1/chat/completions", {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body,
  });

type ErrorBody = { error: { message: string; type: string; code: string } };

describe("BodyBudget", () => {
  test("takes bytes while they fit under the cap and gives them back", () => {
    const budget = new BodyBudget(100);
    expect(budget.take(60)).toBe(true);
    expect(budget.take(50)).toBe(false);
    expect(budget.held).toBe(60);
    expect(budget.take(40)).toBe(true);
    expect(budget.take(1)).toBe(false);
    budget.give(60);
    expect(budget.held).toBe(40);
    expect(budget.take(50)).toBe(true);
  });
});

describe("router app: bodies in flight", () => {
  test("a body that does not fit in what is left gets 503 with Retry-After; a small one still fits; the bytes come back once read", async () => {
    const { app, metrics } = router({ maxBodyBytes: 4096, maxBodyMemoryBytes: 4096 });
    // A client that declared 3,000 bytes and sent half: its whole length is held.
    const slow = trickle();
    const whole = chatBytes(3000);
    slow.send(whole.subarray(0, 1500));
    const slowReply = post(app, slow.stream, { "content-length": "3000" });
    await eventually(async () => metric(await metrics(), "fleet_router_body_bytes") === 3000, {
      what: "the slow body's declared length held",
    });

    const refused = await post(app, chatBytes(2000), { "content-length": "2000" });
    expect(refused.status).toBe(503);
    expect(refused.headers.get("retry-after")).toBe("1");
    expect(refused.headers.get("connection")).toBe("close");
    const error = ((await refused.json()) as ErrorBody).error;
    expect(error).toMatchObject({ code: "overloaded", type: "server_error" });

    const small = await post(app, chatBytes(500), { "content-length": "500" });
    expect(small.status).toBe(200);

    slow.send(whole.subarray(1500));
    slow.end();
    expect((await slowReply).status).toBe(200);
    const text = await metrics();
    expect(metric(text, "fleet_router_body_bytes")).toBe(0);
    expect(metric(text, "fleet_router_body_refusals_total", { reason: "memory" })).toBe(1);
    // Retried once the slow body is through, the refused request fits.
    expect((await post(app, chatBytes(2000), { "content-length": "2000" })).status).toBe(200);
  });

  test("a chunked body is held chunk by chunk and refused mid-body when the next chunk does not fit", async () => {
    const { app, metrics } = router({ maxBodyBytes: 4096, maxBodyMemoryBytes: 4096 });
    const holder = trickle();
    const holderReply = post(app, holder.stream, { "content-length": "3500" });
    await eventually(async () => metric(await metrics(), "fleet_router_body_bytes") === 3500, {
      what: "the first body held",
    });
    const chunked = trickle();
    const bytes = chatBytes(2048);
    const reply = post(app, chunked.stream);
    chunked.send(bytes.subarray(0, 512));
    await eventually(async () => metric(await metrics(), "fleet_router_body_bytes") === 4012, {
      what: "the first chunk held",
    });
    chunked.send(bytes.subarray(512, 1024));
    const refused = await reply;
    expect(refused.status).toBe(503);
    expect(((await refused.json()) as ErrorBody).error.code).toBe("overloaded");
    expect(metric(await metrics(), "fleet_router_body_bytes")).toBe(3500);
    holder.send(chatBytes(3500));
    holder.end();
    expect((await holderReply).status).toBe(200);
    expect(metric(await metrics(), "fleet_router_body_bytes")).toBe(0);
  });

  test("a body that has not arrived within bodyTimeoutMs gets 408 in OpenAI's shape and gives its bytes back", async () => {
    const { app, metrics } = router({ bodyTimeoutMs: 300 });
    for (const declared of [true, false]) {
      const stalled = trickle();
      stalled.send(chatBytes(100).subarray(0, 50));
      const reply = await post(app, stalled.stream, declared ? { "content-length": "100" } : {});
      expect(reply.status).toBe(408);
      expect(reply.headers.get("connection")).toBe("close");
      const error = ((await reply.json()) as ErrorBody).error;
      expect(error).toMatchObject({ code: "request_timeout", type: "invalid_request_error" });
      expect(error.message).toContain("0.3 s");
    }
    const text = await metrics();
    expect(metric(text, "fleet_router_body_bytes")).toBe(0);
    expect(metric(text, "fleet_router_body_refusals_total", { reason: "timeout" })).toBe(2);
  });
});
