/**
 * Gateway overhead benchmark: `bun bench/gateway.ts` (BENCH_SECONDS, default 3, per case).
 *  (a) client → simulator direct
 *  (b) client → a bare Hono fetch-proxy (below, in its own process) → simulator
 *  (c) client → router (bun router/main.ts) → simulator standing in as a worker
 *  (d) client → router → agent (bun agent/main.ts, VLLM_BIN=agent/sim/vllm) → simulator
 * For each: req/s and p50/p99 at concurrency 1 and 64 (non-stream chat, simulator latency
 * off), stream time-to-first-byte at concurrency 1, and the CPU time the hop's process spends
 * per request; then the router's RSS while it holds 1,000 concurrent streams. Paths run in
 * BENCH_ROUNDS (5) interleaved rounds; (c)/(b) is the median of the per-round ratios. The load generator (bench/lib/load.ts) runs in this process,
 * every server in its own.
 *
 * `BENCH_ONLY=memory bun bench/gateway.ts` measures only the router's memory with 1,000 streams.
 * `bun bench/gateway.ts bare-proxy PORT TARGET` runs only the bare proxy (case b's child).
 */
import { Hono } from "hono";
import { simAgentEnv } from "../devkit/fleet.ts";
import { formatLoad, type LoadResult, runLoad, runStreams } from "./lib/load.ts";
import { bunBin, freePort, type SpawnedServer, spawnServer } from "./lib/server.ts";

if (process.argv[2] === "bare-proxy") {
  // The baseline: what a minimal Hono proxy costs (no parsing, balancing or accounting).
  const [port, target] = [Number(process.argv[3]), String(process.argv[4])];
  const app = new Hono();
  app.all("*", (c) => {
    const url = new URL(c.req.url);
    return fetch(`${target}${url.pathname}`, {
      method: c.req.method,
      headers: c.req.raw.headers,
      body: c.req.raw.body,
      signal: c.req.raw.signal,
    });
  });
  Bun.serve({ hostname: "127.0.0.1", port, fetch: app.fetch });
  console.log(`bare proxy on ${port} → ${target}`);
} else {
  await main();
}

async function main() {
  const seconds = Number(process.env.BENCH_SECONDS ?? 3);
  const token = "bench-fleet-token";
  const alias = "bench";
  const chat = { model: alias, messages: [{ role: "user", content: "Say hello to the fleet." }] };
  const servers: SpawnedServer[] = [];
  // Bun's fetch allows 256 concurrent requests by default; the bare proxy and the agent,
  // which proxy with it, need more (the router has its own client: runtime/http1-fetch.ts).
  const bunFetchEnv = { BUN_CONFIG_MAX_HTTP_REQUESTS: "8192" };

  const spawnSim = async (flags: string[]) => {
    const port = await freePort();
    const server = await spawnServer({
      argv: [
        bunBin,
        "agent/sim/main.ts",
        "serve",
        `org/${alias}`,
        "--served-model-name",
        alias,
        "--host",
        "127.0.0.1",
        "--port",
        String(port),
        ...flags,
      ],
      readyUrl: `http://127.0.0.1:${port}/health`,
    });
    servers.push(server);
    return { server, url: `http://127.0.0.1:${port}` };
  };

  // A stub manager for the routers: a route table per router (MANAGER_URL may carry a path,
  // so each router reads /t/{table}/v1/routes) and a usage sink.
  const tables = new Map<string, unknown[]>();
  let usageRecords = 0;
  const manager = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    async fetch(request) {
      const match = /^\/t\/([^/]+)(\/.*)$/.exec(new URL(request.url).pathname);
      const path = match?.[2];
      if (path === "/v1/routes") {
        const routes = tables.get(match?.[1] ?? "") ?? [];
        return Response.json({ version: "1", routes, api_keys: [] }, { headers: { etag: '"1"' } });
      }
      if (path === "/v1/usage") {
        usageRecords += ((await request.json()) as { records: unknown[] }).records.length;
        return Response.json({ ok: true });
      }
      return new Response(null, { status: 404 });
    },
  });
  const managerUrl = `http://127.0.0.1:${manager.port}`;
  const route = (workerId: string, url: string) => ({
    alias,
    model_name: `org/${alias}`,
    worker_id: workerId,
    worker_url: url,
    vllm_port: null,
    created_at: new Date().toISOString(),
    instance_id: `${workerId}-1`,
    ready: true,
  });

  const spawnRouter = async (table: string, routes: unknown[]) => {
    tables.set(table, routes);
    const port = await freePort();
    const server = await spawnServer({
      argv: [bunBin, "router/main.ts"],
      env: {
        MANAGER_URL: `${managerUrl}/t/${table}`,
        FLEET_TOKEN: token,
        HOST: "127.0.0.1",
        PORT: String(port),
      },
      readyUrl: `http://127.0.0.1:${port}/healthz`,
    });
    servers.push(server);
    return { server, url: `http://127.0.0.1:${port}` };
  };

  /** `proc`: the process doing the hop, whose CPU time per request is reported. */
  type Path = { name: string; url: string; proc?: SpawnedServer };
  type Result = {
    name: string;
    c1: LoadResult;
    c64: LoadResult;
    ttfb: number;
    /** c=64 throughput of every round, in order (rounds are paired across paths). */
    c64Rounds: number[];
    /** CPU time of `proc` per request at c=64, median round, in µs. */
    cpuUsPerRequest: number | null;
  };
  const median = <T>(items: T[], key: (item: T) => number): T => {
    const sorted = [...items].sort((x, y) => key(x) - key(y));
    return sorted[Math.floor(sorted.length / 2)] as T;
  };
  // The machine is shared and noisy: paths are measured in interleaved rounds and each
  // figure is the median round, so every path sees the same background load.
  const measureAll = async (paths: Path[]): Promise<Result[]> => {
    const rounds = Number(process.env.BENCH_ROUNDS ?? 5);
    const roundMs = Math.max(1000, (seconds * 1000) / rounds);
    const c1: LoadResult[][] = paths.map(() => []);
    const c64: LoadResult[][] = paths.map(() => []);
    const ttfb: number[][] = paths.map(() => []);
    const cpu: number[][] = paths.map(() => []);
    for (const path of paths) {
      await runLoad({
        url: `${path.url}/v1/chat/completions`,
        body: chat,
        concurrency: 16,
        durationMs: 500,
      });
    }
    for (let round = 0; round < rounds; round++) {
      for (const [index, path] of paths.entries()) {
        const target = `${path.url}/v1/chat/completions`;
        c1[index]?.push(
          await runLoad({ url: target, body: chat, concurrency: 1, durationMs: roundMs }),
        );
        const cpuBefore = path.proc?.cpuMs() ?? null;
        const loaded = await runLoad({
          url: target,
          body: chat,
          concurrency: 64,
          durationMs: roundMs,
        });
        c64[index]?.push(loaded);
        const cpuAfter = path.proc?.cpuMs() ?? null;
        if (cpuBefore !== null && cpuAfter !== null && loaded.requests > 0) {
          cpu[index]?.push(((cpuAfter - cpuBefore) * 1000) / loaded.requests);
        }
        const streams = await runStreams({
          url: target,
          body: { ...chat, stream: true, max_tokens: 8 },
          concurrency: 1,
          durationMs: 700,
        });
        ttfb[index]?.push(streams.ttfbMs.p50);
      }
    }
    return paths.map((path, index) => {
      const cpuRounds = cpu[index] ?? [];
      const r: Result = {
        name: path.name,
        c1: median(c1[index] ?? [], (x) => x.rps),
        c64: median(c64[index] ?? [], (x) => x.rps),
        ttfb: median(ttfb[index] ?? [], (x) => x),
        c64Rounds: (c64[index] ?? []).map((x) => x.rps),
        cpuUsPerRequest: cpuRounds.length ? median(cpuRounds, (x) => x) : null,
      };
      console.log(`${r.name}\n  c=1   ${formatLoad(r.c1)}\n  c=64  ${formatLoad(r.c64)}`);
      console.log(`  stream TTFB p50 ${r.ttfb.toFixed(2)} ms`);
      if (r.cpuUsPerRequest !== null) {
        console.log(
          `  CPU of the hop's process at c=64: ${r.cpuUsPerRequest.toFixed(0)} µs/request`,
        );
      }
      return r;
    });
  };

  const results: Result[] = [];
  try {
    // BENCH_ONLY=memory skips the throughput cases (for iterating on the router's memory).
    if (process.env.BENCH_ONLY !== "memory") {
      const sim = await spawnSim(["--time-to-first-token", "0", "--inter-token-latency", "0"]);
      const paths: Path[] = [
        { name: "(a) direct to simulator", url: `${sim.url}/proxy/${alias}`, proc: sim.server },
      ];

      const barePort = await freePort();
      const bare = await spawnServer({
        argv: [bunBin, "bench/gateway.ts", "bare-proxy", String(barePort), sim.url],
        env: bunFetchEnv,
        readyUrl: `http://127.0.0.1:${barePort}/health`,
      });
      servers.push(bare);
      paths.push({
        name: "(b) bare Hono fetch-proxy",
        url: `http://127.0.0.1:${barePort}/proxy/${alias}`,
        proc: bare,
      });

      const router = await spawnRouter("c", [route("sim", sim.url)]);
      paths.push({ name: "(c) router → simulator", url: router.url, proc: router.server });
      // (d) the full path: a real agent launching the simulator through VLLM_BIN.
      const agentPort = await freePort();
      const agent = await spawnServer({
        argv: [bunBin, "agent/main.ts"],
        env: {
          ...simAgentEnv({
            workerId: "bench-agent",
            port: agentPort,
            managerUrl: "http://127.0.0.1:9",
            fleetToken: token,
          }),
          LOG_LEVEL: "error",
          ...bunFetchEnv,
        },
        readyUrl: `http://127.0.0.1:${agentPort}/health`,
      });
      servers.push(agent);
      const agentUrl = `http://127.0.0.1:${agentPort}`;
      const auth = { authorization: `Bearer ${token}`, "content-type": "application/json" };
      const launched = await fetch(`${agentUrl}/v1/instances`, {
        method: "POST",
        headers: auth,
        body: JSON.stringify({
          alias,
          model_name: `org/${alias}`,
          extra_args: ["--time-to-first-token", "0", "--inter-token-latency", "0"],
        }),
      });
      if (launched.status !== 202)
        throw new Error(`agent launch: ${launched.status} ${await launched.text()}`);
      for (let tries = 0; ; tries++) {
        const status = (await (
          await fetch(`${agentUrl}/v1/instances/${alias}`, { headers: auth })
        ).json()) as {
          status?: string;
        };
        if (status.status === "ready") break;
        if (tries > 200) throw new Error(`agent instance not ready: ${JSON.stringify(status)}`);
        await Bun.sleep(100);
      }
      const router2 = await spawnRouter("d", [route("agent", agentUrl)]);
      paths.push({ name: "(d) router → agent → simulator", url: router2.url, proc: agent });
      results.push(...(await measureAll(paths)));
    }

    // Router memory with 1,000 concurrent streams (simulator: 10 ms per token, no batch cap).
    const streamSim = await spawnSim([
      "--time-to-first-token",
      "20",
      "--inter-token-latency",
      "10",
      "--max-num-seqs",
      "2048",
    ]);
    // Two measurements, each on a fresh router: (1) exactly 1,000 streams open at once (the
    // goal's wording), (2) turnover: 2,000+ streams through 1,000 slots in 5 s, where
    // finished streams' buffers wait for the garbage collector.
    const streamBody = { ...chat, stream: true, max_tokens: 300, ignore_eos: true };
    for (const [label, load] of [
      ["1,000 open streams", { requests: 1000 }],
      ["1,000 slots with turnover for 5 s", { durationMs: 5000 }],
    ] as const) {
      const streamRouter = await spawnRouter(`streams-${label.length}`, [
        route("stream-sim", streamSim.url),
      ]);
      const idleRss = streamRouter.server.rssMiB() ?? 0;
      let peakRss = idleRss;
      const sampler = setInterval(() => {
        peakRss = Math.max(peakRss, streamRouter.server.rssMiB() ?? 0);
      }, 100);
      const streamResult = await runStreams({
        url: `${streamRouter.url}/v1/chat/completions`,
        body: streamBody,
        concurrency: 1000,
        timeoutMs: 30_000,
        ...load,
      });
      clearInterval(sampler);
      console.log(
        `router RSS, ${label}: idle ${idleRss.toFixed(0)} MiB, peak ${peakRss.toFixed(0)} MiB (${streamResult.streams} streams, errors ${streamResult.errors}, gap p99 ${streamResult.gapMs.p99.toFixed(1)} ms)`,
      );
      await streamRouter.server.stop();
    }

    const [a, b, c, d] = results;
    const row = (r: { name: string; c1: LoadResult; c64: LoadResult; ttfb: number }) =>
      `| ${r.name} | ${Math.round(r.c1.rps)} | ${r.c1.latencyMs.p50.toFixed(2)} | ${r.c1.latencyMs.p99.toFixed(2)} | ${Math.round(r.c64.rps)} | ${r.c64.latencyMs.p50.toFixed(2)} | ${r.c64.latencyMs.p99.toFixed(2)} | ${r.ttfb.toFixed(2)} |`;
    console.log(
      "\n| path | c=1 req/s | c=1 p50 ms | c=1 p99 ms | c=64 req/s | c=64 p50 ms | c=64 p99 ms | stream TTFB p50 ms |",
    );
    console.log("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for (const r of results) console.log(row(r));
    if (a && b && c) {
      // Paired rounds: each round measured (b) and (c) back to back, so the ratio of one
      // round cancels the machine's slow drifts; the median round is the figure.
      const ratios = c.c64Rounds.map((rps, round) => rps / (b.c64Rounds[round] ?? Number.NaN));
      const percent = (x: number) => `${(x * 100).toFixed(0)}%`;
      console.log(
        `\n(c)/(b) throughput at c=64: ${percent(median(ratios, (x) => x))} median of ${ratios.length} paired rounds (${ratios.map(percent).join(", ")}); ratio of medians ${percent(c.c64.rps / b.c64.rps)} (goal ≥ 70%)`,
      );
      if (b.cpuUsPerRequest !== null && c.cpuUsPerRequest !== null) {
        console.log(
          `CPU per request at c=64: router ${c.cpuUsPerRequest.toFixed(0)} µs, bare proxy ${b.cpuUsPerRequest.toFixed(0)} µs`,
        );
      }
      console.log(
        `router hop, added p50 at c=1: ${(c.c1.latencyMs.p50 - a.c1.latencyMs.p50).toFixed(2)} ms (goal ≤ 1 ms)`,
      );
      console.log(`router hop, added stream TTFB p50: ${(c.ttfb - a.ttfb).toFixed(2)} ms`);
    }
    if (c && d) {
      console.log(
        `agent hop, added p50 at c=1: ${(d.c1.latencyMs.p50 - c.c1.latencyMs.p50).toFixed(2)} ms`,
      );
    }
    console.log(`usage records received by the stub manager: ${usageRecords}`);
  } finally {
    await Promise.all(servers.map((server) => server.stop()));
    manager.stop(true);
  }
}
