import { describe, expect, test } from "bun:test";
import { createSimApp } from "../../agent/sim/app.ts";
import { parseServeArgs } from "../../agent/sim/config.ts";
import { metric } from "../../devkit/metrics.ts";
import type { RouteEntry, RouteSnapshot } from "../../protocol/index.ts";
import { type AppDeps, createApp, type FetchLike } from "../../router/app.ts";
import { ReplicaChecker, type Verdict } from "../../router/replica-check.ts";
import { route } from "./route-entry.ts";

/**
 * The router's checks of replicas that keep a request waiting for its first byte: the
 * checker's sharing and verdicts with a fetch whose answers the test holds, and the router
 * app (`app.request`) over a replica that accepts requests and never answers (a black-holed
 * port mapping) next to the engine simulator.
 */

type HeldCall = {
  url: string;
  init: RequestInit | undefined;
  answer(response: Response): void;
  fail(error: Error): void;
};

/** A fetch whose calls wait until the test answers them, or until their signal aborts. */
function heldFetch(): { fetch: FetchLike; calls: HeldCall[] } {
  const calls: HeldCall[] = [];
  const fetch: FetchLike = (input, init) =>
    new Promise<Response>((resolve, reject) => {
      const signal = init?.signal;
      if (signal) {
        if (signal.aborted) return reject(signal.reason);
        signal.addEventListener("abort", () => reject(signal.reason), { once: true });
      }
      calls.push({ url: String(input), init, answer: resolve, fail: reject });
    });
  return { fetch, calls };
}

const agentHealth = (authenticated: boolean) =>
  Response.json(
    authenticated ? { status: "ok", worker_id: "w1", authenticated: true } : { status: "ok" },
  );

function checker(fetch: FetchLike, options: { timeoutMs?: number } = {}) {
  let now = 0;
  const verdicts: Verdict[] = [];
  const instance = new ReplicaChecker({
    fetch,
    timeoutMs: options.timeoutMs ?? 60_000,
    freshMs: 1000,
    now: () => now,
    onVerdict: (_route, verdict) => verdicts.push(verdict),
  });
  return {
    checker: instance,
    verdicts,
    advance(ms: number) {
      now += ms;
    },
  };
}

/** A counter's total: 0 when it is declared and has no sample yet (a typo fails instead). */
function count(text: string, name: string): number {
  expect(text).toContain(`# TYPE ${name} counter`);
  const value = metric(text, name);
  return Number.isNaN(value) ? 0 : value;
}

const w1 = route({ alias: "qwen", workerId: "w1", url: "http://w1.test:8443" });

describe("replica checks: sharing", () => {
  test("requests waiting on one replica share one check, with its agent credential", async () => {
    const { fetch, calls } = heldFetch();
    const { checker: c } = checker(fetch);
    const waiting = Array.from({ length: 5 }, () => c.check(w1));
    // Another alias on the same worker shares it too: the check is of the worker's URL.
    waiting.push(c.check({ ...w1, alias: "other", instance_id: "w1-other" }));
    expect(calls).toHaveLength(1);
    expect(c.inFlight()).toBe(1);
    const [call] = calls;
    expect(call?.url).toBe("http://w1.test:8443/health");
    expect(call?.init?.method).toBe("GET");
    expect(call?.init?.redirect).toBe("manual");
    expect(new Headers(call?.init?.headers).get("authorization")).toBe("Bearer fa_agent-of-w1");
    call?.answer(agentHealth(true));
    const verdicts = await Promise.all(waiting);
    expect(verdicts.map((v) => v.alive)).toEqual([true, true, true, true, true, true]);
    expect(c.inFlight()).toBe(0);
  });

  test("a verdict is reused for a second, then the replica is checked again", async () => {
    const { fetch, calls } = heldFetch();
    const { checker: c, advance, verdicts } = checker(fetch);
    const first = c.check(w1);
    calls[0]?.answer(agentHealth(true));
    await first;
    advance(900);
    expect((await c.check(w1)).alive).toBe(true);
    expect(calls).toHaveLength(1);
    advance(200);
    const again = c.check(w1);
    expect(calls).toHaveLength(2);
    calls[1]?.fail(new TypeError("fetch failed: connection reset"));
    expect(await again).toEqual({
      alive: false,
      cause: "GET /health failed: fetch failed: connection reset",
    });
    // Each check reports its verdict once, however many requests heard it.
    expect(verdicts.map((v) => v.alive)).toEqual([true, false]);
  });

  test("each worker URL has its own check", () => {
    const { fetch, calls } = heldFetch();
    const { checker: c } = checker(fetch);
    void c.check(w1);
    void c.check(route({ alias: "qwen", workerId: "w2", url: "http://w2.test" }));
    expect(calls.map((call) => call.url)).toEqual([
      "http://w1.test:8443/health",
      "http://w2.test/health",
    ]);
  });
});

describe("replica checks: verdicts", () => {
  test("no answer within the timeout is unresponsive, and the check is aborted", async () => {
    const { fetch, calls } = heldFetch();
    const { checker: c } = checker(fetch, { timeoutMs: 30 });
    const verdict = await c.check(w1);
    expect(verdict).toEqual({ alive: false, cause: "GET /health did not answer within 30 ms" });
    expect(calls[0]?.init?.signal?.aborted).toBe(true);
  });

  const cases: { name: string; answer: () => Response; route?: RouteEntry; alive: boolean }[] = [
    { name: "the agent confirming its credential", answer: () => agentHealth(true), alive: true },
    {
      name: "an agent that does not know the credential (another host behind the mapping)",
      answer: () => agentHealth(false),
      alive: false,
    },
    {
      name: "a redirect (never followed)",
      answer: () => new Response(null, { status: 302, headers: { location: "http://evil.test" } }),
      alive: false,
    },
    {
      name: "a mapping's own 502",
      answer: () => new Response("bad gateway", { status: 502 }),
      alive: false,
    },
    {
      name: "an oversized answer",
      answer: () => new Response("x".repeat(10_000)),
      alive: false,
    },
    {
      name: "an open agent (no credential to confirm)",
      answer: () => new Response(""),
      route: route({ alias: "qwen", workerId: "w1", url: "http://w1.test", agentToken: null }),
      alive: true,
    },
  ];
  for (const { name, answer, route: target, alive } of cases) {
    test(`${alive ? "alive" : "unresponsive"}: ${name}`, async () => {
      const { fetch, calls } = heldFetch();
      const { checker: c } = checker(fetch);
      const verdict = c.check(target ?? w1);
      calls[0]?.answer(answer());
      expect((await verdict).alive).toBe(alive);
    });
  }
});

/** The simulator serving `qwen`: `ttftMs` before the first token, `itlMs` between tokens. */
function simulator(options: { ttftMs: number; itlMs: number }) {
  return createSimApp(
    parseServeArgs(
      [
        "serve",
        "org/qwen",
        "--served-model-name",
        "qwen",
        "--time-to-first-token",
        String(options.ttftMs),
        "--inter-token-latency",
        String(options.itlMs),
        "--max-model-len",
        "2048",
      ],
      { SIM_FAIL_STARTUP: false, SIM_ACCESS_LOG: false },
    ),
  );
}

/**
 * A router over `hole.test` (accepts every request and never answers, /health included: a
 * black-holed port mapping) and replicas served by simulators, each answering /health as
 * its agent would.
 */
function router(options: {
  replicas: Record<string, ReturnType<typeof simulator> | "black-hole">;
  timeouts: NonNullable<AppDeps["timeouts"]>;
}) {
  const held = heldFetch();
  const log: { host: string; path: string }[] = [];
  const snapshot: RouteSnapshot = {
    version: "1",
    routes: Object.keys(options.replicas).map((host) =>
      route({ alias: "qwen", workerId: host, url: `http://${host}.test` }),
    ),
    api_keys: [],
  };
  const app = createApp({
    routes: { current: () => snapshot },
    usage: { record: () => {} },
    timeouts: options.timeouts,
    retry: { maxAttempts: 3, budgetMs: 60_000 },
    fetch: (input, init) => {
      const url = new URL(String(input));
      const host = url.hostname.replace(/\.test$/, "");
      log.push({ host, path: url.pathname });
      const replica = options.replicas[host];
      if (replica === undefined) throw new TypeError("fetch failed: no such host");
      if (replica === "black-hole") return held.fetch(input, init);
      if (url.pathname === "/health") {
        const authorization = new Headers(init?.headers).get("authorization");
        return Promise.resolve(agentHealth(authorization === `Bearer fa_agent-of-${host}`));
      }
      return Promise.resolve(replica.fetch(new Request(input, init)));
    },
  });
  const chat = (stream: boolean) =>
    app.request("/v1/chat/completions", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        model: "qwen",
        messages: [{ role: "user", content: "one two three" }],
        stream,
      }),
    });
  const metrics = async () => (await app.request("/metrics")).text();
  const calls = (host: string, path: string) =>
    log.filter((entry) => entry.host === host && entry.path.startsWith(path)).length;
  return { chat, metrics, calls };
}

describe("router app: a replica that accepts connections and never answers", () => {
  test("its waiting requests share one check, it is ejected, and they are answered elsewhere", async () => {
    const { chat, metrics, calls } = router({
      replicas: { hole: "black-hole", live: simulator({ ttftMs: 0, itlMs: 0 }) },
      // The first-byte timeout is far away: only the check can move these requests on.
      timeouts: { firstByteMs: 600_000, firstByteProbeMs: 100, probeTimeoutMs: 100 },
    });
    const started = performance.now();
    const responses = await Promise.all(
      Array.from({ length: 8 }, async (_, index) => {
        const response = await chat(index % 2 === 0);
        const text = await response.text();
        return { status: response.status, text, ms: Math.round(performance.now() - started) };
      }),
    );
    console.log(
      `8 requests, ${calls("hole", "/proxy")} sent to the black hole first; took ms:`,
      responses.map((r) => r.ms).join(" "),
    );
    expect(responses.map((r) => r.status)).toEqual(Array(8).fill(200));
    for (const r of responses) expect(r.text).toContain("one");
    const sentToHole = calls("hole", "/proxy");
    expect(sentToHole).toBeGreaterThan(0);
    // All of them waited on one check.
    expect(calls("hole", "/health")).toBe(1);
    const text = await metrics();
    expect(
      metric(text, "fleet_router_replica_checks_total", {
        worker_id: "hole",
        result: "unresponsive",
      }),
    ).toBe(1);
    expect(metric(text, "fleet_router_ejections_total", { alias: "qwen", worker_id: "hole" })).toBe(
      1,
    );
    expect(
      metric(text, "fleet_router_retries_total", { alias: "qwen", reason: "unresponsive" }),
    ).toBe(sentToHole);

    // Ejected: the next requests go straight to the live replica.
    for (let index = 0; index < 4; index++) expect((await chat(false)).status).toBe(200);
    expect(calls("hole", "/proxy")).toBe(sentToHole);
  });

  test("with FIRST_BYTE_PROBE_MS=0 there is no check: only the first-byte timeout moves a request on", async () => {
    const { chat, metrics, calls } = router({
      replicas: { hole: "black-hole" },
      timeouts: { firstByteMs: 300, firstByteProbeMs: 0 },
    });
    const response = await chat(false);
    expect(response.status).toBe(504);
    expect(calls("hole", "/health")).toBe(0);
    expect(count(await metrics(), "fleet_router_replica_checks_total")).toBe(0);
  });

  test("alone, it answers 502 once its check fails, long before the first-byte timeout", async () => {
    const { chat } = router({
      replicas: { hole: "black-hole" },
      timeouts: { firstByteMs: 600_000, firstByteProbeMs: 50, probeTimeoutMs: 50 },
    });
    const response = await chat(false);
    expect(response.status).toBe(502);
    const body = (await response.json()) as { error: { code: string } };
    expect(body.error.code).toBe("upstream_error");
  });
});

describe("router app: replicas that answer their checks", () => {
  test("a slow first token keeps its request waiting on the replica, checked again while it waits", async () => {
    const { chat, metrics, calls } = router({
      replicas: { slow: simulator({ ttftMs: 400, itlMs: 0 }) },
      timeouts: { firstByteMs: 600_000, firstByteProbeMs: 60, probeTimeoutMs: 1000 },
    });
    const [plain, streamed] = await Promise.all([chat(false), chat(true)]);
    expect(plain.status).toBe(200);
    expect(streamed.status).toBe(200);
    expect(await streamed.text()).toContain("[DONE]");
    expect(calls("slow", "/proxy")).toBe(2);
    // Checked more than once while waiting 400 ms (every 60 ms, a verdict reused for 60 ms).
    expect(calls("slow", "/health")).toBeGreaterThan(1);
    const text = await metrics();
    expect(
      metric(text, "fleet_router_replica_checks_total", { worker_id: "slow", result: "alive" }),
    ).toBeGreaterThan(1);
    expect(count(text, "fleet_router_ejections_total")).toBe(0);
    expect(count(text, "fleet_router_retries_total")).toBe(0);
  });

  test("a stream producing tokens is never checked", async () => {
    const { chat, calls } = router({
      replicas: { live: simulator({ ttftMs: 0, itlMs: 40 }) },
      timeouts: { firstByteMs: 600_000, firstByteProbeMs: 20, probeTimeoutMs: 20 },
    });
    const response = await chat(true);
    const text = await response.text();
    expect(text).toContain('"content":"two "');
    expect(text).toContain("[DONE]");
    expect(calls("live", "/health")).toBe(0);
  });
});
