import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import OpenAI from "openai";
import { type OpenTestDb, openFreshDb } from "../../devkit/db.ts";
import { metric, metricAt, scrape } from "../../devkit/metrics.ts";
import { eventually, freePort } from "../../devkit/net.ts";
import { stopAll } from "../../devkit/proc.ts";
import {
  addReplicas,
  type Router,
  type ServedManager,
  serveManager,
  startRouter,
  startSim,
} from "./fixtures.ts";

/**
 * What a client notices when replicas die, answer 503 or stall, when it hangs up, and when
 * the manager goes away: a standalone Bun router process polling the real manager app
 * (served on loopback by this process), in front of engine simulators standing in for
 * workers. Every test builds its own replicas, manager state and router.
 */

let db: OpenTestDb;
const cleanups: (() => unknown)[] = [];

beforeAll(async () => {
  db = await openFreshDb();
});
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  await stopAll();
});
afterAll(async () => {
  await db?.destroy();
});

/** A manager over the emptied database, listening on loopback, closed after the test. */
async function manager(): Promise<ServedManager> {
  // Probes off: these replicas count every connection and request they get, and the
  // manager's health probes of worker URLs are not what these tests measure.
  const served = await serveManager(db, { config: { probeIntervalS: 0 } });
  cleanups.push(() => served.close());
  return served;
}

/** A test server on loopback, stopped after the test. */
function serve(fetch: (request: Request) => Response | Promise<Response>) {
  const server = Bun.serve({ hostname: "127.0.0.1", port: 0, idleTimeout: 0, fetch });
  cleanups.push(() => server.stop(true));
  return { url: `http://127.0.0.1:${server.port}` };
}

const chat = (content: string, extra: Record<string, unknown> = {}) => ({
  model: "qwen",
  messages: [{ role: "user" as const, content }],
  max_tokens: 8,
  ...extra,
});

const openai = (router: Router) =>
  new OpenAI({ baseURL: `${router.url}/v1`, apiKey: "unused", maxRetries: 0 });

async function post(router: Router, body: unknown, headers: Record<string, string> = {}) {
  return fetch(`${router.url}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: JSON.stringify(body),
  });
}

describe("router failover", () => {
  test("keeps answering when a replica's process dies mid-run", async () => {
    const fleet = await manager();
    const [simA, simB] = await Promise.all([
      startSim({ names: ["qwen"], ttftMs: 150 }),
      startSim({ names: ["qwen"], ttftMs: 150 }),
    ]);
    await addReplicas(fleet, "qwen", [
      { workerId: "a", url: simA.url },
      { workerId: "b", url: simB.url },
    ]);
    const router = await startRouter("bun", fleet.url, { EJECT_COOLDOWN_MS: "60000" });
    const client = openai(router);
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
    expect(
      await metricAt(router.metrics, "fleet_router_retries_total", { alias: "qwen" }),
    ).toBeGreaterThan(0);
  });

  test("ejects a replica that keeps failing and stops sending it traffic", async () => {
    const fleet = await manager();
    const live = await startSim({ names: ["qwen"] });
    // A replica whose process is gone: nothing listens on its port.
    const gone = `http://127.0.0.1:${await freePort()}`;
    await addReplicas(fleet, "qwen", [
      { workerId: "a", url: live.url },
      { workerId: "b", url: gone },
    ]);
    const router = await startRouter("bun", fleet.url, { EJECT_COOLDOWN_MS: "60000" });
    const metrics = router.metrics;
    for (let index = 0; ; index++) {
      if (index === 40) throw new Error("b was never ejected");
      const response = await post(router, chat(`until ejected ${index}`));
      expect(response.status).toBe(200);
      await response.text();
      if ((await metricAt(metrics, "fleet_router_ejections_total", { worker_id: "b" })) >= 1) break;
    }
    expect(await metricAt(metrics, "fleet_router_ejected_replicas")).toBe(1);
    const before = await metricAt(metrics, "fleet_router_retries_total", { alias: "qwen" });
    for (let index = 0; index < 5; index++) {
      const response = await post(router, chat(`after ejection ${index}`));
      expect(response.status).toBe(200);
      await response.text();
    }
    expect(await metricAt(metrics, "fleet_router_retries_total", { alias: "qwen" })).toBe(before);
  });

  test("retries a 503 from an agent on another replica until it is ejected, and passes a 400 through untouched", async () => {
    const fleet = await manager();
    const live = await startSim({ names: ["qwen"] });
    let sickHits = 0;
    // An agent whose engine is not serving: every request gets 503.
    const sick = serve(() => {
      sickHits++;
      return Response.json(
        { error: { message: "engine not ready", type: "server_error", param: null, code: 503 } },
        { status: 503 },
      );
    });
    await addReplicas(fleet, "qwen", [
      { workerId: "a", url: live.url },
      { workerId: "sick", url: sick.url },
    ]);
    const router = await startRouter("bun", fleet.url, { EJECT_COOLDOWN_MS: "60000" });
    const metrics = router.metrics;
    const client = openai(router);
    for (let index = 0; ; index++) {
      if (index === 40) throw new Error("the sick replica was never ejected");
      const reply = await client.chat.completions.create(chat(`sick neighbour ${index}`));
      expect(reply.choices[0]?.message.content?.length).toBeGreaterThan(0);
      if ((await metricAt(metrics, "fleet_router_ejections_total", { worker_id: "sick" })) >= 1) {
        break;
      }
    }
    // Ejected after exactly 3 consecutive 503s, and sent nothing after that.
    expect(sickHits).toBe(3);
    for (let index = 0; index < 10; index++) {
      await client.chat.completions.create(chat(`after ejection ${index}`));
    }
    expect(sickHits).toBe(3);

    // A context-length 400 from the engine reaches the client exactly as the engine sent it,
    // and is not retried.
    const tooLong = chat("too long", { max_tokens: 10_000_000 });
    const direct = await fetch(`${live.url}/proxy/qwen/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(tooLong),
    });
    const retries = await metricAt(metrics, "fleet_router_retries_total", { alias: "qwen" });
    const through = await post(router, tooLong);
    expect(through.status).toBe(400);
    expect(await through.json()).toEqual(await direct.json());
    expect(await metricAt(metrics, "fleet_router_retries_total", { alias: "qwen" })).toBe(retries);
  });

  test("answers 502 when no replica can be reached, after trying each once", async () => {
    const fleet = await manager();
    // Two port mappings whose backends accept a connection and drop it at once.
    const accepted = new Map<string, number>();
    const dropping = (name: string) => {
      const listener = Bun.listen({
        hostname: "127.0.0.1",
        port: 0,
        socket: {
          open(socket) {
            accepted.set(name, (accepted.get(name) ?? 0) + 1);
            socket.end();
          },
          data() {},
        },
      });
      cleanups.push(() => listener.stop(true));
      return `http://127.0.0.1:${listener.port}`;
    };
    await addReplicas(fleet, "qwen", [
      { workerId: "gone1", url: dropping("gone1") },
      { workerId: "gone2", url: dropping("gone2") },
    ]);
    const router = await startRouter("bun", fleet.url);
    const response = await post(router, chat("anyone there"));
    expect(response.status).toBe(502);
    expect(((await response.json()) as { error: { code: string } }).error.code).toBe(
      "upstream_error",
    );
    expect(Object.fromEntries(accepted)).toEqual({ gone1: 1, gone2: 1 });
    expect(await metricAt(router.metrics, "fleet_router_retries_total", { alias: "qwen" })).toBe(1);
    const rows = await eventually(async () => {
      const usage = await fleet.usage();
      return usage.length > 0 ? usage : undefined;
    });
    expect(rows.map((row) => row.status)).toEqual([502]);
  });
});

describe("router streaming and cancellation", () => {
  test("delivers each stream event as it comes: the first arrives before the agent writes the second", async () => {
    const fleet = await manager();
    const encoder = new TextEncoder();
    const event = (content: string) =>
      encoder.encode(
        `data: ${JSON.stringify({ choices: [{ index: 0, delta: { content } }] })}\n\n`,
      );
    let secondWritten = false;
    let release: () => void = () => {};
    const released = new Promise<void>((resolve) => {
      release = resolve;
    });
    const agent = serve(
      () =>
        new Response(
          new ReadableStream<Uint8Array>({
            async start(controller) {
              controller.enqueue(event("first"));
              // Hold the second event until the client has the first (or give up after 10 s,
              // which fails the check below instead of hanging the test).
              await Promise.race([released, Bun.sleep(10_000)]);
              secondWritten = true;
              controller.enqueue(event("second"));
              controller.enqueue(encoder.encode("data: [DONE]\n\n"));
              controller.close();
            },
          }),
          { headers: { "content-type": "text/event-stream" } },
        ),
    );
    await addReplicas(fleet, "qwen", [{ workerId: "a", url: agent.url }]);
    const router = await startRouter("bun", fleet.url);
    const response = await post(router, { ...chat("stream"), stream: true });
    expect(response.status).toBe(200);
    const reader = (response.body as ReadableStream<Uint8Array>).getReader();
    const decoder = new TextDecoder();
    let text = "";
    while (!text.includes("\n\n")) {
      const chunk = await reader.read();
      if (chunk.done) break;
      text += decoder.decode(chunk.value, { stream: true });
    }
    expect(text).toContain('"content":"first"');
    expect(secondWritten).toBe(false);
    release();
    for (let chunk = await reader.read(); !chunk.done; chunk = await reader.read()) {
      text += decoder.decode(chunk.value, { stream: true });
    }
    expect(text).toContain('"content":"second"');
    expect(text.trimEnd().endsWith("data: [DONE]")).toBe(true);
  });

  test("a client hanging up mid-stream aborts the request on the engine", async () => {
    const fleet = await manager();
    const sim = await startSim({ names: ["qwen"], ttftMs: 20, itlMs: 40 });
    await addReplicas(fleet, "qwen", [{ workerId: "a", url: sim.url }]);
    const router = await startRouter("bun", fleet.url);
    const controller = new AbortController();
    const stream = await openai(router).chat.completions.create(
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
        const text = await scrape(`${sim.url}/metrics`);
        return metric(text, "vllm:request_success_total", { finished_reason: "abort" }) >= 1 &&
          metric(text, "vllm:num_requests_running") === 0
          ? text
          : undefined;
      },
      { what: "the engine to abort the request", timeoutMs: 10_000 },
    );
    expect(metric(metrics, "vllm:request_success_total", { finished_reason: "length" }) || 0).toBe(
      0,
    );
    const record = await eventually(
      async () => (await fleet.usage()).find((row) => row.status === 499),
      { what: "a usage record for the abandoned stream" },
    );
    expect(record.stream).toBe(true);
    expect(record.worker_id).toBe("a");
    expect(record.ttft_ms).not.toBeNull();
  });

  test("a client hanging up on a non-streamed request aborts it on the engine once the router watches (CLIENT_WATCH_AFTER_MS)", async () => {
    const fleet = await manager();
    const sim = await startSim({ names: ["qwen"], ttftMs: 20, itlMs: 40 });
    await addReplicas(fleet, "qwen", [{ workerId: "a", url: sim.url }]);
    // No replica check: only the client watch can stop the request (the simulator fails the
    // check's credential test, which would abort it too).
    const router = await startRouter("bun", fleet.url, { FIRST_BYTE_PROBE_MS: "0" });
    const controller = new AbortController();
    // 2,000 tokens at 40 ms each: over a minute, unless the router stops it ("abort" below).
    const answer = fetch(`${router.url}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(chat("a very long story", { max_tokens: 2000, ignore_eos: true })),
      signal: controller.signal,
    }).catch((error: unknown) => error);
    await eventually(
      async () => metric(await scrape(`${sim.url}/metrics`), "vllm:num_requests_running") === 1,
      { what: "the engine to be generating" },
    );
    controller.abort();
    expect(await answer).toBeInstanceOf(Error);
    await eventually(
      async () => {
        const text = await scrape(`${sim.url}/metrics`);
        return (
          metric(text, "vllm:request_success_total", { finished_reason: "abort" }) >= 1 &&
          metric(text, "vllm:num_requests_running") === 0
        );
      },
      { what: "the engine to abort the request", timeoutMs: 10_000 },
    );
    const record = await eventually(
      async () => (await fleet.usage()).find((row) => row.status === 499),
      { what: "a usage record for the abandoned request" },
    );
    expect(record.stream).toBe(false);
    expect(record.worker_id).toBe("a");
  });
});

describe("router session affinity", () => {
  /** Three simulators as workers w0..w2 behind a router. */
  async function threeReplicas() {
    const fleet = await manager();
    const sims = await Promise.all([0, 1, 2].map(() => startSim({ names: ["qwen"] })));
    await addReplicas(
      fleet,
      "qwen",
      sims.map((sim, index) => ({ workerId: `w${index}`, url: sim.url })),
    );
    const router = await startRouter("bun", fleet.url);
    const ask = async (session: string, header = true) => {
      const response = await post(
        router,
        chat(`hello from ${session}`, header ? {} : { user: session }),
        header ? { "x-session-id": session } : {},
      );
      expect(response.status).toBe(200);
      await response.text();
    };
    /** The worker of each request the manager recorded, from the `from`-th on. */
    const workers = async (count: number, from = 0) => {
      const rows = await eventually(async () => {
        const usage = await fleet.usage();
        return usage.length >= count ? usage : undefined;
      });
      return rows.slice(from, count).map((row) => row.worker_id);
    };
    return { sims, ask, workers };
  }

  test("keeps a session on one replica (x-session-id or body user) and spreads sessions", async () => {
    const { ask, workers } = await threeReplicas();
    for (let index = 0; index < 8; index++) await ask("alice");
    for (let index = 0; index < 8; index++) await ask("bob", false);
    expect(new Set(await workers(8)).size).toBe(1);
    expect(new Set(await workers(16, 8)).size).toBe(1);
    for (let index = 0; index < 30; index++) await ask(`user-${index}`);
    expect(new Set(await workers(46, 16)).size).toBe(3);
  });

  test("moves a session to another replica when its replica dies, and keeps it there", async () => {
    const { sims, ask, workers } = await threeReplicas();
    await ask("carol");
    const [home] = await workers(1);
    await sims[Number(home?.slice(1))]?.stop("SIGKILL");
    for (let index = 0; index < 5; index++) await ask("carol");
    const after = new Set(await workers(6, 1));
    expect(after.size).toBe(1);
    expect(after.has(home ?? null)).toBe(false);
  });
});

describe("router without its manager", () => {
  test("keeps serving the last route table and delivers buffered usage when the manager returns", async () => {
    const fleet = await manager();
    const sim = await startSim({ names: ["qwen"] });
    await addReplicas(fleet, "qwen", [{ workerId: "a", url: sim.url }]);
    const router = await startRouter("bun", fleet.url);
    const metrics = router.metrics;
    const client = openai(router);
    fleet.stop();
    for (let index = 0; index < 5; index++) {
      const reply = await client.chat.completions.create(chat(`outage ${index}`));
      expect(reply.choices[0]?.message.content?.length).toBeGreaterThan(0);
    }
    // The router tried to deliver, failed, and holds the records: in memory, or in its spool
    // on disk once it backs off.
    await eventually(
      async () =>
        (await metricAt(metrics, "fleet_router_usage_batches_total", { result: "failed" })) >= 1 &&
        (await metricAt(metrics, "fleet_router_usage_buffered")) +
          (await metricAt(metrics, "fleet_router_usage_spooled")) ===
          5,
      { what: "a failed delivery with 5 records held" },
    );
    expect(await fleet.usage()).toEqual([]);
    fleet.resume();
    const rows = await eventually(
      async () => {
        const usage = await fleet.usage();
        return usage.length === 5 ? usage : undefined;
      },
      { what: "buffered usage delivered", timeoutMs: 40_000 },
    );
    expect(rows.every((row) => row.status === 200 && row.worker_id === "a")).toBe(true);
  }, 60_000);
});

describe("router timeouts", () => {
  for (const runtime of ["bun", "node"] as const) {
    // On Bun the connect deadline belongs to the HTTP/1.1 client, which UPSTREAM_CLIENT=auto
    // (the default) uses for streams; Bun's fetch, used for whole answers, has none.
    test(`${runtime}: skips a replica that never completes its connection after CONNECT_TIMEOUT_MS`, async () => {
      const fleet = await manager();
      const sim = await startSim({ names: ["qwen"] });
      // A port mapping whose backend accepts and then says nothing: the TLS handshake to
      // its https:// URL never finishes. Only the connect timeout can tell it apart.
      const silent = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
      cleanups.push(() => silent.stop(true));
      await addReplicas(fleet, "qwen", [
        { workerId: "silent", url: `https://127.0.0.1:${silent.port}` },
        { workerId: "live", url: sim.url },
      ]);
      const router = await startRouter(runtime, fleet.url, {
        CONNECT_TIMEOUT_MS: "300",
        FIRST_BYTE_TIMEOUT_MS: "60000",
      });
      // Until the balancer has tried the silent replica at least once (p2c is random).
      for (let attempt = 0; attempt < 20; attempt++) {
        const started = performance.now();
        const response = await post(router, chat(`request ${attempt}`, { stream: true }));
        expect(response.status).toBe(200);
        expect(await response.text()).toEndWith("data: [DONE]\n\n");
        // Far below the first-byte timeout: the connect timeout moved it on.
        expect(performance.now() - started).toBeLessThan(5000);
        const retried = await metricAt(router.metrics, "fleet_router_retries_total", {
          reason: "connect",
        });
        if (retried > 0) return;
      }
      throw new Error("the silent replica was never tried");
    });
  }

  test("ends a stream that stalls mid-way with an error event, and a silent agent with 504", async () => {
    const fleet = await manager();
    const encoder = new TextEncoder();
    // An agent that starts a stream and then goes quiet, and one that never answers.
    const stalling = serve((request) => {
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
    });
    await addReplicas(fleet, "qwen", [{ workerId: "stall", url: stalling.url }]);
    await addReplicas(fleet, "silent", [{ workerId: "silent", url: stalling.url }]);
    const router = await startRouter("bun", fleet.url, {
      IDLE_TIMEOUT_MS: "300",
      FIRST_BYTE_TIMEOUT_MS: "300",
    });
    const response = await post(router, { ...chat("hi"), stream: true });
    expect(response.status).toBe(200);
    const text = await response.text();
    expect(text).toContain('"content":"Hel"');
    expect(text).toContain('"error"');
    expect(text.trimEnd().endsWith("data: [DONE]")).toBe(true);

    const silent = await post(router, { ...chat("hi"), model: "silent" });
    expect(silent.status).toBe(504);
    expect(((await silent.json()) as { error: { code: string } }).error.code).toBe(
      "upstream_timeout",
    );
    const statuses = await eventually(async () => {
      const usage = await fleet.usage();
      return usage.length >= 2 ? usage.map((row) => [row.alias, row.status]) : undefined;
    });
    expect(statuses.sort()).toEqual([
      ["qwen", 504],
      ["silent", 504],
    ]);
  });
});
