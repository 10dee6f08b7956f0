import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import OpenAI from "openai";
import { eventually, freePort } from "../../devkit/net.ts";
import { stopAll } from "../../devkit/proc.ts";
import {
  metricValue,
  type Router,
  route,
  type Sim,
  type StubManager,
  startRouter,
  startSim,
  startStubManager,
} from "./fixtures.ts";

/**
 * What a client notices when replicas die, answer 503 or stall, when it hangs up, and when
 * the manager goes away: a standalone Bun router in front of engine simulators standing in
 * for workers.
 */

afterAll(async () => {
  await stopAll();
});

const chat = (content: string, extra: Record<string, unknown> = {}) => ({
  model: "qwen",
  messages: [{ role: "user" as const, content }],
  max_tokens: 8,
  ...extra,
});

describe("router failover", () => {
  let manager: StubManager;
  let router: Router;
  let simA: Sim;
  let simB: Sim;
  let client: OpenAI;
  let agent503: ReturnType<typeof Bun.serve>;
  let agent503Hits = 0;

  beforeAll(async () => {
    manager = await startStubManager();
    [simA, simB] = await Promise.all([
      startSim({ names: ["qwen"], ttftMs: 150 }),
      startSim({ names: ["qwen"], ttftMs: 150 }),
    ]);
    // An agent whose engine is not serving: every request gets 503.
    agent503 = Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      fetch() {
        agent503Hits++;
        return Response.json(
          { error: { message: "engine not ready", type: "server_error", param: null, code: 503 } },
          { status: 503 },
        );
      },
    });
    manager.set([
      route({ alias: "qwen", workerId: "a", url: simA.url }),
      route({ alias: "qwen", workerId: "b", url: simB.url }),
    ]);
    // A long cool-down keeps ejected replicas out for the whole describe block.
    router = await startRouter("bun", manager, { EJECT_COOLDOWN_MS: "60000" });
    client = new OpenAI({ baseURL: `${router.url}/v1`, apiKey: "unused", maxRetries: 0 });
  });

  afterAll(() => {
    manager.stop();
    agent503.stop(true);
  });

  test("keeps answering when a replica's process dies mid-run", async () => {
    let failures = 0;
    let done = 0;
    const worker = async (id: number) => {
      for (let index = 0; index < 10; index++) {
        try {
          const reply = await client.chat.completions.create(chat(`client ${id} request ${index}`));
          if (reply.choices[0]?.message.content) done++;
        } catch {
          failures++;
        }
      }
    };
    const clients = Promise.all([0, 1, 2, 3].map(worker));
    // Kill B while requests are in flight on it (each takes ~150 ms before any byte).
    await eventually(() => done >= 4, { what: "some requests answered" });
    simB.proc.kill("SIGKILL");
    await clients;
    expect(failures).toBe(0);
    expect(done).toBe(40);
    const metrics = await (await fetch(`${router.url}/metrics`)).text();
    expect(metricValue(metrics, "fleet_router_retries_total", { alias: "qwen" })).toBeGreaterThan(
      0,
    );
  });

  test("ejects a replica that keeps failing and stops sending it traffic", async () => {
    // B is dead (previous test); after its ejection, requests go straight to A.
    const metrics = await (await fetch(`${router.url}/metrics`)).text();
    expect(
      metricValue(metrics, "fleet_router_ejections_total", { worker_id: "b" }),
    ).toBeGreaterThan(0);
    const before = metricValue(metrics, "fleet_router_retries_total");
    for (let index = 0; index < 5; index++) {
      await client.chat.completions.create(chat(`after ejection ${index}`));
    }
    const after = metricValue(
      await (await fetch(`${router.url}/metrics`)).text(),
      "fleet_router_retries_total",
    );
    expect(after).toBe(before);
  });

  test("retries a 503 from an agent on another replica and passes 4xx through untouched", async () => {
    manager.set([
      route({ alias: "qwen", workerId: "a", url: simA.url }),
      route({ alias: "qwen", workerId: "sick", url: `http://127.0.0.1:${agent503.port}` }),
    ]);
    await eventually(async () => {
      const models = await client.models.list();
      return models.data.length === 1;
    });
    agent503Hits = 0;
    for (let index = 0; index < 12; index++) {
      const reply = await client.chat.completions.create(chat(`sick neighbour ${index}`));
      expect(reply.choices[0]?.message.content?.length).toBeGreaterThan(0);
    }
    expect(agent503Hits).toBeGreaterThan(0);
    // Ejected after 3 consecutive 503s: it stops getting most of the traffic.
    expect(agent503Hits).toBeLessThan(8);
    // A context-length 400 from the engine reaches the client as is, and is not retried.
    const error = await client.chat.completions
      .create(chat("too long", { max_tokens: 10_000_000 }))
      .catch((caught: unknown) => caught as { status: number; message: string });
    expect((error as { status: number }).status).toBe(400);
    expect((error as { message: string }).message).toMatch(/maximum context length/);
  });

  test("answers 502 when no replica can be reached, after trying each once", async () => {
    const dead1 = await freePort();
    const dead2 = await freePort();
    manager.set([
      route({ alias: "qwen", workerId: "gone1", url: `http://127.0.0.1:${dead1}` }),
      route({ alias: "qwen", workerId: "gone2", url: `http://127.0.0.1:${dead2}` }),
    ]);
    const status = await eventually(async () => {
      const response = await fetch(`${router.url}/v1/chat/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(chat("anyone there")),
      });
      const body = (await response.json()) as { error?: { code?: string } };
      return response.status === 502 && body.error?.code === "upstream_error" ? 502 : undefined;
    });
    expect(status).toBe(502);
  });
});

describe("router streaming and cancellation", () => {
  let manager: StubManager;
  let router: Router;
  let sim: Sim;
  let client: OpenAI;

  beforeAll(async () => {
    manager = await startStubManager();
    sim = await startSim({ names: ["qwen"], ttftMs: 20, itlMs: 40 });
    manager.set([route({ alias: "qwen", workerId: "a", url: sim.url })]);
    router = await startRouter("bun", manager);
    client = new OpenAI({ baseURL: `${router.url}/v1`, apiKey: "unused", maxRetries: 0 });
  });

  afterAll(() => manager.stop());

  test("delivers stream chunks as they are generated, not at the end", async () => {
    const started = performance.now();
    const stream = await client.chat.completions.create({
      ...chat("stream slowly", { max_tokens: 25, ignore_eos: true }),
      stream: true,
    });
    const arrivals: number[] = [];
    for await (const _ of stream) arrivals.push(performance.now() - started);
    expect(arrivals.length).toBeGreaterThan(10);
    // 25 tokens at 40 ms each take ~1 s; a buffering proxy would deliver them all at once.
    const first = arrivals[0] ?? 0;
    const last = arrivals[arrivals.length - 1] ?? 0;
    expect(last - first).toBeGreaterThan(400);
  });

  test("a client hanging up mid-stream aborts the request on the engine", async () => {
    const controller = new AbortController();
    const stream = await client.chat.completions.create(
      { ...chat("a very long story", { max_tokens: 2000, ignore_eos: true }), stream: true },
      { signal: controller.signal },
    );
    let chunks = 0;
    try {
      for await (const _ of stream) {
        if (++chunks === 3) controller.abort();
      }
    } catch {
      // the SDK raises APIUserAbortError
    }
    const metrics = await eventually(
      async () => {
        const text = await (await fetch(`${sim.url}/metrics`)).text();
        return metricValue(text, "vllm:request_success_total", { finished_reason: "abort" }) >= 1 &&
          metricValue(text, "vllm:num_requests_running") === 0
          ? text
          : undefined;
      },
      { what: "the engine to abort the request", timeoutMs: 10_000 },
    );
    expect(metricValue(metrics, "vllm:num_requests_running")).toBe(0);
    const record = await eventually(() => manager.usage.find((r) => r.status === 499), {
      what: "a usage record for the abandoned stream",
    });
    expect(record.stream).toBe(true);
    expect(record.ttft_ms).not.toBeNull();
  });
});

describe("router session affinity", () => {
  let manager: StubManager;
  let router: Router;
  let sims: Sim[];

  beforeAll(async () => {
    manager = await startStubManager();
    sims = await Promise.all([0, 1, 2].map(() => startSim({ names: ["qwen"] })));
    manager.set(
      sims.map((sim, index) => route({ alias: "qwen", workerId: `w${index}`, url: sim.url })),
    );
    router = await startRouter("bun", manager);
  });

  afterAll(() => manager.stop());

  const ask = async (session: string, header = true) => {
    const response = await fetch(`${router.url}/v1/chat/completions`, {
      method: "POST",
      headers: {
        "content-type": "application/json",
        ...(header ? { "x-session-id": session } : {}),
      },
      body: JSON.stringify(chat(`hello from ${session}`, header ? {} : { user: session })),
    });
    expect(response.status).toBe(200);
    await response.text();
  };

  const workersOf = async (count: number, match: (index: number) => boolean) => {
    const records = await eventually(() =>
      manager.usage.length >= count ? manager.usage : undefined,
    );
    return records.filter((_, index) => match(index)).map((r) => r.worker_id);
  };

  test("keeps a session on one replica (x-session-id or body user) and spreads sessions", async () => {
    for (let index = 0; index < 8; index++) await ask("alice");
    for (let index = 0; index < 8; index++) await ask("bob", false);
    const alice = new Set(await workersOf(16, (index) => index < 8));
    const bob = new Set(await workersOf(16, (index) => index >= 8 && index < 16));
    expect(alice.size).toBe(1);
    expect(bob.size).toBe(1);
    for (let index = 0; index < 30; index++) await ask(`user-${index}`);
    const spread = new Set(await workersOf(46, (index) => index >= 16));
    expect(spread.size).toBe(3);
  });

  test("moves a session to another replica when its replica dies", async () => {
    const before = manager.usage.length;
    await ask("carol");
    const [home] = await workersOf(before + 1, (index) => index === before);
    const victim = sims[Number(home?.slice(1))];
    await victim?.stop("SIGKILL");
    const start = manager.usage.length;
    for (let index = 0; index < 5; index++) await ask("carol");
    const after = new Set(await workersOf(start + 5, (index) => index >= start));
    expect(after.size).toBe(1);
    expect(after.has(home ?? null)).toBe(false);
  });
});

describe("router without its manager", () => {
  test("keeps serving the last route table and delivers buffered usage when the manager returns", async () => {
    const manager = await startStubManager();
    const sim = await startSim({ names: ["qwen"] });
    manager.set([route({ alias: "qwen", workerId: "a", url: sim.url })]);
    const router = await startRouter("bun", manager);
    const client = new OpenAI({ baseURL: `${router.url}/v1`, apiKey: "unused", maxRetries: 0 });
    manager.down = true;
    for (let index = 0; index < 5; index++) {
      const reply = await client.chat.completions.create(chat(`outage ${index}`));
      expect(reply.choices[0]?.message.content?.length).toBeGreaterThan(0);
    }
    await Bun.sleep(500);
    expect(manager.usage.filter((r) => r.status === 200)).toHaveLength(0);
    manager.down = false;
    await eventually(() => manager.usage.filter((r) => r.status === 200).length === 5, {
      what: "buffered usage delivered",
      timeoutMs: 20_000,
    });
    manager.stop();
  });
});

describe("router timeouts", () => {
  for (const runtime of ["bun", "node"] as const) {
    test(`${runtime}: skips a replica that never completes its connection after CONNECT_TIMEOUT_MS`, async () => {
      const manager = await startStubManager();
      const sim = await startSim({ names: ["qwen"] });
      // A port mapping whose backend accepts and then says nothing: the TLS handshake to
      // its https:// URL never finishes. Only the connect timeout can tell it apart.
      const silent = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
      manager.set([
        route({ alias: "qwen", workerId: "silent", url: `https://127.0.0.1:${silent.port}` }),
        route({ alias: "qwen", workerId: "live", url: sim.url }),
      ]);
      const router = await startRouter(runtime, manager, {
        CONNECT_TIMEOUT_MS: "300",
        FIRST_BYTE_TIMEOUT_MS: "60000",
      });
      try {
        // Until the balancer has tried the silent replica at least once (p2c is random).
        for (let attempt = 0; attempt < 20; attempt++) {
          const started = performance.now();
          const response = await fetch(`${router.url}/v1/chat/completions`, {
            method: "POST",
            headers: { "content-type": "application/json" },
            body: JSON.stringify(chat(`request ${attempt}`)),
          });
          expect(response.status).toBe(200);
          await response.arrayBuffer();
          expect(performance.now() - started).toBeLessThan(5000);
          const metrics = await (await fetch(`${router.url}/metrics`)).text();
          if (metricValue(metrics, "fleet_router_retries_total", { reason: "connect" }) > 0) return;
        }
        throw new Error("the silent replica was never tried");
      } finally {
        silent.stop(true);
        manager.stop();
        await router.stop();
        await sim.stop();
      }
    });
  }

  test("ends a stream that stalls mid-way with an error event, and a silent agent with 504", async () => {
    const manager = await startStubManager();
    const encoder = new TextEncoder();
    // An agent that starts a stream and then goes quiet, and one that never answers.
    const stalling = Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      idleTimeout: 0,
      fetch(request) {
        if (new URL(request.url).pathname.startsWith("/proxy/silent/")) {
          return new Promise<Response>(() => {});
        }
        const body = new ReadableStream<Uint8Array>({
          start(controller) {
            const chunk = { choices: [{ index: 0, delta: { content: "Hel" } }] };
            controller.enqueue(encoder.encode(`data: ${JSON.stringify(chunk)}\n\n`));
          },
        });
        return new Response(body, { headers: { "content-type": "text/event-stream" } });
      },
    });
    const agentUrl = `http://127.0.0.1:${stalling.port}`;
    manager.set([
      route({ alias: "qwen", workerId: "stall", url: agentUrl }),
      route({ alias: "silent", workerId: "silent", url: agentUrl }),
    ]);
    const router = await startRouter("bun", manager, {
      IDLE_TIMEOUT_MS: "300",
      FIRST_BYTE_TIMEOUT_MS: "300",
    });
    const response = await fetch(`${router.url}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ ...chat("hi"), stream: true }),
    });
    expect(response.status).toBe(200);
    const text = await response.text();
    expect(text).toContain('"content":"Hel"');

    expect(text).toContain('"error"');
    expect(text.trimEnd().endsWith("data: [DONE]")).toBe(true);

    const silent = await fetch(`${router.url}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ ...chat("hi"), model: "silent" }),
    });
    expect(silent.status).toBe(504);
    expect(((await silent.json()) as { error: { code: string } }).error.code).toBe(
      "upstream_timeout",
    );
    const statuses = await eventually(() =>
      manager.usage.length >= 2 ? manager.usage.map((r) => r.status).sort() : undefined,
    );
    expect(statuses).toEqual([504, 504]);
    stalling.stop(true);
    manager.stop();
  });
});
