/**
 * Gateway overhead benchmark: `bun bench/gateway.ts` (BENCH_SECONDS, default 3, per case).
 *  (a) client → simulator direct
 *  (b) client → a bare Hono fetch-proxy (below, in its own process) → simulator
 *  (r) client → router (bun router/main.ts) on its default clients (UPSTREAM_CLIENT=auto: Bun's
 *      fetch for whole answers, the HTTP/1.1 client for streams) → simulator as a worker
 *  (c) the same router on Bun's fetch alone (UPSTREAM_CLIENT=fetch)
 *  (h) the same router on the hand-written HTTP/1.1 client alone (UPSTREAM_CLIENT=http1)
 *  (m) client → manager (bun manager/main.ts, PGlite) with the router mounted → simulator
 *  (s) client → router (auto) reading routes from that manager and posting usage to it, as a
 *      standalone router is deployed: its usage costs the manager's database what (m)'s does
 *  (d) client → router → agent (bun agent/main.ts, VLLM_BIN=agent/sim/vllm) → simulator
 * For each: req/s and p50/p99 at concurrency 1 and 64 (non-stream chat, simulator latency
 * off), stream time-to-first-byte at concurrency 1, and the CPU time the hop's process spends
 * per request. Paths run in BENCH_ROUNDS (5) interleaved rounds; a figure is the median
 * round, and a ratio such as (c)/(b) is the median of the per-round ratios. Then:
 *  - memory: each client's router RSS with 1,000 open streams, and with 1,000 slots turning
 *    over for 5 s, in BENCH_MEMORY_ROUNDS (2) alternating rounds (BENCH_MEMORY_CLIENTS, default
 *    `auto,fetch,http1`, picks the clients);
 *  - connect: each client's router in front of a black-holed replica and a live one
 *    (a TLS port that never completes the handshake; a TCP port that accepts and never
 *    answers), with CONNECT_TIMEOUT_MS=500 and FIRST_BYTE_TIMEOUT_MS=5000.
 * The load generator (bench/lib/load.ts) runs in this process, every server in its own.
 * Routers that use Bun's fetch get BUN_CONFIG_MAX_HTTP_REQUESTS from the environment, as the
 * npm scripts set it; every router runs with the GC pacer on (its default).
 *
 * `BENCH_ONLY=memory` (or `throughput`, `connect`, comma-separated) runs only those sections.
 * `BENCH_PATHS=b,r` measures only those throughput paths (keys as above; default all).
 * `BENCH_BASELINE=/path/to/checkout` adds (r0): the (r) router run from another checkout of this
 * repository (a commit to compare against), side by side in the same rounds; its CPU per
 * request and throughput are reported as paired ratios against (r).
 * `BENCH_CPU_PROF=dir` runs the (r) router and the (b) bare proxy under `bun --cpu-prof-md`
 * (a sample every BENCH_CPU_PROF_INTERVAL_US, 250 µs); the profiles (router.md, bare.md) are
 * written to `dir` when the benchmark stops them.
 * `bun bench/gateway.ts bare-proxy PORT TARGET` runs only the bare proxy (case b's child).
 */
import { Hono } from "hono";
import { createTestDatabase, type TestDatabase } from "../devkit/db.ts";
import { joinedAgentDataDir, simAgentEnv } from "../devkit/fleet.ts";
import { formatLoad, type LoadResult, median, runLoad, runStreams } from "./lib/load.ts";
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
  // Exits rather than dies on SIGTERM, so that a CPU profile (BENCH_CPU_PROF) is written.
  process.on("SIGTERM", () => process.exit(0));
  console.log(`bare proxy on ${port} → ${target}`);
} else {
  await main();
}

type Client = "auto" | "fetch" | "http1";

/** This process's CPU time (user and system), in ms. */
function ownCpuMs(): number {
  const { user, system } = process.cpuUsage();
  return (user + system) / 1000;
}

function percent(x: number): string {
  return `${(x * 100).toFixed(0)}%`;
}

async function main() {
  const seconds = Number(process.env.BENCH_SECONDS ?? 3);
  const only = new Set((process.env.BENCH_ONLY ?? "throughput,memory,connect").split(","));
  const token = "bench-fleet-token";
  // The credential routes carry for the agent (as if it had joined): what routers send it.
  const agentToken = "fa_bench-agent-credential";
  const adminToken = "bench-admin-token";
  const alias = "bench";
  const chat = { model: alias, messages: [{ role: "user", content: "Say hello to the fleet." }] };
  const servers: SpawnedServer[] = [];
  const cleanups: (() => Promise<void> | void)[] = [];
  // Bun's fetch allows 256 concurrent requests unless this is set at startup (the npm
  // scripts set it): the bare proxy, the agent and routers on Bun's fetch need it.
  const bunFetchEnv = { BUN_CONFIG_MAX_HTTP_REQUESTS: "65000" };

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

  // A stub manager for the standalone routers: a route table per router (MANAGER_URL may
  // carry a path, so each router reads /t/{table}/v1/routes) and a usage sink.
  const tables = new Map<string, unknown[]>();
  let usageRecords = 0;
  const stubManager = Bun.serve({
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
  cleanups.push(() => stubManager.stop(true));
  const managerUrl = `http://127.0.0.1:${stubManager.port}`;
  const route = (workerId: string, url: string, routing?: "round_robin") => ({
    alias,
    model_name: `org/${alias}`,
    worker_id: workerId,
    worker_url: url,
    vllm_port: null,
    created_at: new Date().toISOString(),
    instance_id: `${workerId}-1`,
    ready: true,
    agent_token: agentToken,
    ...(routing ? { routing } : {}),
  });

  let tableCount = 0;
  const spawnRouter = async (
    client: Client,
    routes: unknown[],
    extraEnv: Record<string, string> = {},
    /** Another checkout to run the router from, and flags for Bun (a profiler). */
    from: { cwd?: string; bunFlags?: string[] } = {},
  ) => {
    const table = `t${tableCount++}`;
    tables.set(table, routes);
    const port = await freePort();
    const server = await spawnServer({
      cwd: from.cwd,
      argv: [bunBin, ...(from.bunFlags ?? []), "router/main.ts"],
      env: {
        MANAGER_URL: `${managerUrl}/t/${table}`,
        // The stub manager takes any router credential; agents check FLEET_TOKEN on /proxy.
        ROUTER_TOKEN: "fr_bench-router-credential",
        FLEET_TOKEN: token,
        HOST: "127.0.0.1",
        PORT: String(port),
        UPSTREAM_CLIENT: client,
        LOG_LEVEL: "error",
        ...(client === "http1" ? {} : bunFetchEnv),
        ...extraEnv,
      },
      readyUrl: `http://127.0.0.1:${port}/healthz`,
    });
    servers.push(server);
    return { server, url: `http://127.0.0.1:${port}` };
  };

  const auth = { authorization: `Bearer ${agentToken}`, "content-type": "application/json" };
  const spawnAgent = async (env: Record<string, string> = {}) => {
    const port = await freePort();
    const agent = await spawnServer({
      argv: [bunBin, "agent/main.ts"],
      env: {
        ...simAgentEnv({
          workerId: "bench-agent",
          port,
          managerUrl: "http://127.0.0.1:9",
          fleetToken: token,
        }),
        AGENT_DATA_DIR: joinedAgentDataDir({
          workerId: "bench-agent",
          managerUrl: "http://127.0.0.1:9",
          agentToken,
        }),
        LOG_LEVEL: "error",
        ...bunFetchEnv,
        ...env,
      },
      readyUrl: `http://127.0.0.1:${port}/health`,
    });
    servers.push(agent);
    return { server: agent, url: `http://127.0.0.1:${port}` };
  };

  /**
   * The manager with the router mounted (PGlite, or Postgres when DATABASE_URL is set); its
   * route to `workerUrl` comes from a real placement: an agent that advertises `workerUrl` as
   * its PUBLIC_URL runs the model. Usage lands in its `request_logs`, in this process.
   */
  const spawnMountedRouter = async (workerUrl: string) => {
    const database: TestDatabase = await createTestDatabase();
    console.log(`manager database: ${database.target}`);
    cleanups.push(() => database.destroy());
    const port = await freePort();
    const url = `http://127.0.0.1:${port}`;
    const manager = await spawnServer({
      argv: [bunBin, "manager/main.ts"],
      env: {
        DATABASE_URL: "",
        ...database.env,
        HOST: "127.0.0.1",
        PORT: String(port),
        FLEET_TOKEN: token,
        ADMIN_TOKEN: adminToken,
        RECONCILE_INTERVAL_S: "0.5",
        // The route's URL is the simulator itself (standing in for the agent's port mapping),
        // whose /health is not an agent's: a probing manager would withdraw the route.
        PROBE_INTERVAL_S: "0",
        LOG_LEVEL: "error",
        ...bunFetchEnv,
      },
      readyUrl: `${url}/health`,
      timeoutMs: 60_000,
    });
    servers.push(manager);
    await spawnAgent({ MANAGER_URL: url, PUBLIC_URL: workerUrl, WORKER_ID: "bench-public" });
    const admin = { authorization: `Bearer ${adminToken}`, "content-type": "application/json" };
    for (let tries = 0; ; tries++) {
      const registered = await fetch(`${url}/v1/models/register`, {
        method: "POST",
        headers: admin,
        body: JSON.stringify({ alias, model_name: `org/${alias}`, gpu_memory_utilization: 0.5 }),
      });
      if (registered.ok) break;
      // The agent may not have registered yet: no GPU to place on.
      if (tries > 100) throw new Error(`register: ${registered.status} ${await registered.text()}`);
      await Bun.sleep(200);
    }
    for (let tries = 0; ; tries++) {
      const answer = await fetch(`${url}/v1/chat/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(chat),
      });
      await answer.arrayBuffer();
      if (answer.status === 200) break;
      if (tries > 300) throw new Error(`mounted router never answered: ${answer.status}`);
      await Bun.sleep(200);
    }
    return { server: manager, url, admin };
  };

  /** A standalone router on the mounted router's manager, with a router credential of its own. */
  const spawnRouterOn = async (manager: { url: string; admin: Record<string, string> }) => {
    const created = await fetch(`${manager.url}/v1/routers`, {
      method: "POST",
      headers: manager.admin,
      body: JSON.stringify({ name: "bench-standalone" }),
    });
    if (created.status !== 201) throw new Error(`router credential: ${created.status}`);
    const { token: routerToken } = (await created.json()) as { token: string };
    const port = await freePort();
    const server = await spawnServer({
      argv: [bunBin, "router/main.ts"],
      env: {
        MANAGER_URL: manager.url,
        ROUTER_TOKEN: routerToken,
        HOST: "127.0.0.1",
        PORT: String(port),
        LOG_LEVEL: "error",
        ...bunFetchEnv,
      },
      readyUrl: `http://127.0.0.1:${port}/healthz`,
    });
    servers.push(server);
    return { server, url: `http://127.0.0.1:${port}` };
  };

  type Throughput = {
    name: string;
    c1: LoadResult;
    c64: LoadResult;
    ttfb: number;
    /** c=64 throughput of every round, in order (rounds are paired across paths). */
    c64Rounds: number[];
    /** CPU time of `proc` per request at c=64, median round, in µs. */
    cpuUsPerRequest: number | null;
    /** The same, every round in order. */
    cpuRounds: number[];
    /** Of that, the main (JavaScript) thread's, median round, in µs. */
    mainCpuUsPerRequest: number | null;
  };
  /** `proc`: the process doing the hop, whose CPU time per request is reported. */
  type Path = { key: string; name: string; url: string; proc?: SpawnedServer };

  // The machine is shared and noisy: paths are measured in interleaved rounds and each
  // figure is the median round, so every path sees the same background load.
  const measureAll = async (
    paths: Path[],
    /** Other processes whose CPU per request at c=64 is reported beside the hop's. */
    elsewhere: { name: string; cpuMs(): number | null }[] = [],
  ): Promise<Map<string, Throughput>> => {
    const rounds = Number(process.env.BENCH_ROUNDS ?? 5);
    const roundMs = Math.max(1000, (seconds * 1000) / rounds);
    const c1: LoadResult[][] = paths.map(() => []);
    const c64: LoadResult[][] = paths.map(() => []);
    const ttfb: number[][] = paths.map(() => []);
    const cpu: number[][] = paths.map(() => []);
    const mainCpu: number[][] = paths.map(() => []);
    const elsewhereCpu: number[][][] = paths.map(() => elsewhere.map(() => []));
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
        const mainBefore = path.proc?.mainThreadCpuMs() ?? null;
        const elsewhereBefore = elsewhere.map((other) => other.cpuMs());
        const loaded = await runLoad({
          url: target,
          body: chat,
          concurrency: 64,
          durationMs: roundMs,
        });
        if (loaded.non2xx > 0 || loaded.errors > 0) {
          // A path answering errors is fast for the wrong reason: stop rather than report it.
          throw new Error(
            `${path.name}: ${loaded.errors} errors and ${loaded.non2xx} answers outside 2xx (${JSON.stringify(loaded.statuses)})`,
          );
        }
        c64[index]?.push(loaded);
        const cpuAfter = path.proc?.cpuMs() ?? null;
        const mainAfter = path.proc?.mainThreadCpuMs() ?? null;
        if (cpuBefore !== null && cpuAfter !== null && loaded.requests > 0) {
          cpu[index]?.push(((cpuAfter - cpuBefore) * 1000) / loaded.requests);
        }
        if (mainBefore !== null && mainAfter !== null && loaded.requests > 0) {
          mainCpu[index]?.push(((mainAfter - mainBefore) * 1000) / loaded.requests);
        }
        for (const [which, other] of elsewhere.entries()) {
          const [before, after] = [elsewhereBefore[which], other.cpuMs()];
          if (before === null || before === undefined || after === null) continue;
          elsewhereCpu[index]?.[which]?.push(((after - before) * 1000) / loaded.requests);
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
    const results = new Map<string, Throughput>();
    for (const [index, path] of paths.entries()) {
      const cpuRounds = cpu[index] ?? [];
      const mainRounds = mainCpu[index] ?? [];
      const r: Throughput = {
        name: path.name,
        c1: median(c1[index] ?? [], (x) => x.rps),
        c64: median(c64[index] ?? [], (x) => x.rps),
        ttfb: median(ttfb[index] ?? [], (x) => x),
        c64Rounds: (c64[index] ?? []).map((x) => x.rps),
        cpuUsPerRequest: cpuRounds.length ? median(cpuRounds, (x) => x) : null,
        cpuRounds,
        mainCpuUsPerRequest: mainRounds.length ? median(mainRounds, (x) => x) : null,
      };
      console.log(`${r.name}\n  c=1   ${formatLoad(r.c1)}\n  c=64  ${formatLoad(r.c64)}`);
      console.log(`  stream TTFB p50 ${r.ttfb.toFixed(2)} ms`);
      if (r.cpuUsPerRequest !== null) {
        console.log(
          `  CPU of the hop's process at c=64: ${r.cpuUsPerRequest.toFixed(0)} µs/request (main thread ${r.mainCpuUsPerRequest?.toFixed(0) ?? "-"})`,
        );
      }
      const others = elsewhere.flatMap((other, which) => {
        const rounds = elsewhereCpu[index]?.[which] ?? [];
        return rounds.length ? [`${other.name} ${median(rounds, (x) => x).toFixed(0)}`] : [];
      });
      if (others.length > 0)
        console.log(`  CPU elsewhere at c=64, µs/request: ${others.join(", ")}`);
      results.set(path.key, r);
    }
    return results;
  };

  const throughput = async () => {
    const wanted = new Set((process.env.BENCH_PATHS ?? "a,b,r,r0,c,h,m,s,d").split(","));
    const baseline = process.env.BENCH_BASELINE;
    const profileDir = process.env.BENCH_CPU_PROF;
    const profileFlags = (name: string) =>
      profileDir
        ? [
            "--cpu-prof-md",
            `--cpu-prof-interval=${process.env.BENCH_CPU_PROF_INTERVAL_US ?? 250}`,
            `--cpu-prof-dir=${profileDir}`,
            `--cpu-prof-name=${name}`,
          ]
        : [];
    const sim = await spawnSim(["--time-to-first-token", "0", "--inter-token-latency", "0"]);
    const paths: Path[] = [];
    if (wanted.has("a")) {
      paths.push({
        key: "a",
        name: "(a) direct to simulator",
        url: `${sim.url}/proxy/${alias}`,
        proc: sim.server,
      });
    }
    if (wanted.has("b")) {
      const barePort = await freePort();
      const bare = await spawnServer({
        argv: [
          bunBin,
          ...profileFlags("bare.md"),
          "bench/gateway.ts",
          "bare-proxy",
          String(barePort),
          sim.url,
        ],
        env: bunFetchEnv,
        readyUrl: `http://127.0.0.1:${barePort}/health`,
      });
      servers.push(bare);
      paths.push({
        key: "b",
        name: "(b) bare Hono fetch-proxy",
        url: `http://127.0.0.1:${barePort}/proxy/${alias}`,
        proc: bare,
      });
    }
    if (wanted.has("r")) {
      const onAuto = await spawnRouter(
        "auto",
        [route("sim", sim.url)],
        {},
        profileDir ? { bunFlags: profileFlags("router.md") } : {},
      );
      paths.push({
        key: "r",
        name: "(r) router → simulator, default clients (auto)",
        url: onAuto.url,
        proc: onAuto.server,
      });
    }
    if (baseline && wanted.has("r0")) {
      const onBaseline = await spawnRouter("auto", [route("sim", sim.url)], {}, { cwd: baseline });
      paths.push({
        key: "r0",
        name: `(r0) router from ${baseline} → simulator, default clients (auto)`,
        url: onBaseline.url,
        proc: onBaseline.server,
      });
    }
    if (wanted.has("c")) {
      const onFetch = await spawnRouter("fetch", [route("sim", sim.url)]);
      paths.push({
        key: "c",
        name: "(c) router → simulator, Bun fetch",
        url: onFetch.url,
        proc: onFetch.server,
      });
    }
    if (wanted.has("h")) {
      const onHttp1 = await spawnRouter("http1", [route("sim", sim.url)]);
      paths.push({
        key: "h",
        name: "(h) router → simulator, HTTP/1.1 client",
        url: onHttp1.url,
        proc: onHttp1.server,
      });
    }
    if (wanted.has("m") || wanted.has("s")) {
      const mounted = await spawnMountedRouter(sim.url);
      if (wanted.has("m")) {
        paths.push({
          key: "m",
          name: "(m) manager-mounted router → simulator",
          url: mounted.url,
          proc: mounted.server,
        });
      }
      if (wanted.has("s")) {
        const standalone = await spawnRouterOn(mounted);
        paths.push({
          key: "s",
          name: "(s) standalone router, usage to that manager → simulator",
          url: standalone.url,
          proc: standalone.server,
        });
      }
    }
    if (wanted.has("d")) {
      // (d) the full path: a real agent launching the simulator through VLLM_BIN.
      const agent = await spawnAgent();
      const launched = await fetch(`${agent.url}/v1/instances`, {
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
          await fetch(`${agent.url}/v1/instances/${alias}`, { headers: auth })
        ).json()) as { status?: string };
        if (status.status === "ready") break;
        if (tries > 200) throw new Error(`agent instance not ready: ${JSON.stringify(status)}`);
        await Bun.sleep(100);
      }
      const viaAgent = await spawnRouter("auto", [route("agent", agent.url)]);
      paths.push({
        key: "d",
        name: "(d) router → agent → simulator",
        url: viaAgent.url,
        proc: agent.server,
      });
    }
    // The load generator shares its process with the stub manager, which takes the
    // standalone routers' usage batches: both are on the same two cores as the hop.
    return measureAll(paths, [
      { name: "load generator and stub manager", cpuMs: ownCpuMs },
      { name: "simulator", cpuMs: () => sim.server.cpuMs() },
    ]);
  };

  // Router memory with 1,000 concurrent streams (simulator: 10 ms per token, no batch cap).
  // Two loads, each on a fresh router: (1) exactly 1,000 streams open at once (the goal's
  // wording), (2) turnover: 2,000+ streams through 1,000 slots in 5 s, where finished
  // streams' buffers wait for the garbage collector.
  type MemoryRow = { client: Client; load: string; idle: number; peak: number; note: string };
  const memory = async (): Promise<MemoryRow[]> => {
    const streamSim = await spawnSim([
      "--time-to-first-token",
      "20",
      "--inter-token-latency",
      "10",
      "--max-num-seqs",
      "2048",
    ]);
    const streamBody = { ...chat, stream: true, max_tokens: 300, ignore_eos: true };
    const allClients: Client[] = ["auto", "fetch", "http1"];
    const asked = (process.env.BENCH_MEMORY_CLIENTS ?? allClients.join(",")).split(",");
    const memoryClients = allClients.filter((client) => asked.includes(client));
    if (memoryClients.length === 0) {
      throw new Error(`BENCH_MEMORY_CLIENTS names none of ${allClients.join(", ")}`);
    }
    const rows: MemoryRow[] = [];
    const rounds = Number(process.env.BENCH_MEMORY_ROUNDS ?? 2);
    for (let round = 0; round < rounds; round++) {
      for (const [load, shape] of [
        ["1,000 open", { requests: 1000 }],
        ["turnover 5 s", { durationMs: 5000 }],
      ] as const) {
        // Alternate which client goes first, so neither always runs on a warmer machine.
        const clients = memoryClients;
        const order = round % 2 === 0 ? clients : [...clients].reverse();
        for (const client of order) {
          const router = await spawnRouter(client, [route("stream-sim", streamSim.url)]);
          const idle = router.server.rssMiB() ?? 0;
          let peak = idle;
          const sampler = setInterval(() => {
            peak = Math.max(peak, router.server.rssMiB() ?? 0);
          }, 100);
          const result = await runStreams({
            url: `${router.url}/v1/chat/completions`,
            body: streamBody,
            concurrency: 1000,
            timeoutMs: 30_000,
            ...shape,
          });
          clearInterval(sampler);
          const note = `${result.streams} streams, errors ${result.errors}, gap p99 ${result.gapMs.p99.toFixed(1)} ms`;
          console.log(
            `router RSS (${client}), ${load}: idle ${idle.toFixed(0)} MiB, peak ${peak.toFixed(0)} MiB (${note})`,
          );
          rows.push({ client, load, idle, peak, note });
          await router.server.stop();
          servers.splice(servers.indexOf(router.server), 1);
        }
      }
    }
    return rows;
  };

  // A black-holed replica next to a live one. The router has no way to tell a replica that
  // is slow to answer (vLLM queues) from one that is gone, except at connect time.
  type ConnectRow = {
    client: Client;
    hole: string;
    hits: number;
    statuses: string;
    slowest: number;
    p50Hit: number;
  };
  const connect = async (): Promise<ConnectRow[]> => {
    const sim = await spawnSim([]);
    // TLS: the handshake never completes (a port mapping whose backend is gone).
    const tlsHole = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
    // TCP: accepts, reads the request, never answers (a wedged process).
    const tcpHole = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
    cleanups.push(() => tlsHole.stop(true));
    cleanups.push(() => tcpHole.stop(true));
    const holes = [
      ["TLS, no handshake", `https://127.0.0.1:${tlsHole.port}`],
      ["TCP, no answer", `http://127.0.0.1:${tcpHole.port}`],
    ] as const;
    const rows: ConnectRow[] = [];
    for (const [hole, holeUrl] of holes) {
      for (const client of ["auto", "fetch", "http1"] as const) {
        // Round robin: the same prompt twelve times would otherwise be placed by load alone,
        // the same way each time, and try the hole always or never.
        const replicas = [
          route("hole", holeUrl, "round_robin"),
          route("live", sim.url, "round_robin"),
        ];
        const router = await spawnRouter(client, replicas, {
          CONNECT_TIMEOUT_MS: "500",
          FIRST_BYTE_TIMEOUT_MS: "5000",
          // Keep the hole in rotation: every request that picks it shows the cost again.
          EJECT_AFTER_FAILURES: "1000",
        });
        const latencies: number[] = [];
        const statuses = new Map<number, number>();
        // Each request is sent alone, and every other one tries the hole first.
        for (let index = 0; index < 12; index++) {
          const started = performance.now();
          const response = await fetch(`${router.url}/v1/chat/completions`, {
            method: "POST",
            headers: { "content-type": "application/json" },
            body: JSON.stringify({ ...chat, max_tokens: 4 }),
          });
          await response.arrayBuffer();
          latencies.push(performance.now() - started);
          statuses.set(response.status, (statuses.get(response.status) ?? 0) + 1);
        }
        const hits = latencies.filter((ms) => ms > 250);
        const row: ConnectRow = {
          client,
          hole,
          hits: hits.length,
          statuses: [...statuses].map(([status, count]) => `${count}×${status}`).join(" "),
          slowest: Math.max(...latencies),
          p50Hit: hits.length ? median(hits, (x) => x) : 0,
        };
        console.log(
          `black hole (${hole}) via ${client}: ${row.hits}/12 requests tried it, ${row.statuses}, p50 of those ${row.p50Hit.toFixed(0)} ms, slowest ${row.slowest.toFixed(0)} ms`,
        );
        rows.push(row);
        await router.server.stop();
        servers.splice(servers.indexOf(router.server), 1);
      }
    }
    return rows;
  };

  try {
    const results = only.has("throughput") ? await throughput() : new Map<string, Throughput>();
    const memoryRows = only.has("memory") ? await memory() : [];
    const connectRows = only.has("connect") ? await connect() : [];

    if (results.size > 0) {
      const row = (r: Throughput) =>
        `| ${r.name} | ${Math.round(r.c1.rps)} | ${r.c1.latencyMs.p50.toFixed(2)} | ${Math.round(r.c64.rps)} | ${r.c64.latencyMs.p50.toFixed(2)} | ${r.c64.latencyMs.p99.toFixed(2)} | ${r.ttfb.toFixed(2)} | ${r.cpuUsPerRequest?.toFixed(0) ?? "-"} | ${r.mainCpuUsPerRequest?.toFixed(0) ?? "-"} |`;
      console.log(
        "\n| path | c=1 req/s | c=1 p50 ms | c=64 req/s | c=64 p50 ms | c=64 p99 ms | stream TTFB p50 ms | CPU µs/req at c=64 | main thread µs/req |",
      );
      console.log("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
      for (const r of results.values()) console.log(row(r));
      // Paired rounds: each round measured every path back to back, so the ratio of one
      // round cancels the machine's slow drifts; the median round is the figure.
      const ratio = (top: string, bottom: string, goal: string) => {
        const x = results.get(top);
        const y = results.get(bottom);
        if (!x || !y) return;
        const ratios = x.c64Rounds.map((rps, round) => rps / (y.c64Rounds[round] ?? Number.NaN));
        console.log(
          `(${top})/(${bottom}) throughput at c=64: ${percent(median(ratios, (r) => r))} median of ${ratios.length} paired rounds (${ratios.map(percent).join(", ")}) ${goal}`,
        );
      };
      const cpuRatio = (top: string, bottom: string, what: string) => {
        const x = results.get(top);
        const y = results.get(bottom);
        if (!x || !y || x.cpuRounds.length === 0 || y.cpuRounds.length === 0) return;
        const ratios = x.cpuRounds.map((us, round) => us / (y.cpuRounds[round] ?? Number.NaN));
        console.log(
          `(${top})/(${bottom}) CPU per request at c=64: ${percent(median(ratios, (r) => r))} median of ${ratios.length} paired rounds (${x.cpuRounds.map((us) => us.toFixed(0)).join(", ")} µs against ${y.cpuRounds.map((us) => us.toFixed(0)).join(", ")}) ${what}`,
        );
      };
      console.log("");
      ratio("r", "b", "(the router on its default clients; goal ≥ 85%)");
      ratio("r0", "b", "(BENCH_BASELINE's router)");
      ratio("r", "r0", "(this checkout's router against BENCH_BASELINE's)");
      cpuRatio("r", "r0", "(this checkout's router against BENCH_BASELINE's)");
      cpuRatio("r", "b", "(the router against the bare proxy)");
      ratio("c", "b", "(the router on Bun's fetch alone)");
      ratio("h", "b", "(the router on the HTTP/1.1 client alone)");
      ratio("c", "h", "(Bun's fetch against the HTTP/1.1 client)");
      // The manager mounts the router on the same clients as the standalone default (auto).
      ratio("m", "r", "(mounted against standalone whose usage is discarded)");
      ratio(
        "m",
        "s",
        "(mounted against standalone whose usage the same manager writes; goal ≥ 90%)",
      );
      const a = results.get("a");
      for (const key of ["r", "h", "c", "m", "s"]) {
        const r = results.get(key);
        if (!a || !r) continue;
        console.log(
          `(${key}) added p50 at c=1: ${(r.c1.latencyMs.p50 - a.c1.latencyMs.p50).toFixed(2)} ms (goal ≤ 0.5 ms); added stream TTFB p50: ${(r.ttfb - a.ttfb).toFixed(2)} ms`,
        );
      }
      const r = results.get("r");
      const d = results.get("d");
      if (r && d) {
        console.log(
          `agent hop, added p50 at c=1: ${(d.c1.latencyMs.p50 - r.c1.latencyMs.p50).toFixed(2)} ms`,
        );
      }
    }
    if (memoryRows.length > 0) {
      console.log("\n| router client | load | idle MiB | peak MiB per round |");
      console.log("| --- | --- | --- | --- |");
      for (const client of ["auto", "fetch", "http1"] as const) {
        for (const load of ["1,000 open", "turnover 5 s"]) {
          const mine = memoryRows.filter((r) => r.client === client && r.load === load);
          console.log(
            `| ${client} | ${load} | ${mine.map((r) => r.idle.toFixed(0)).join(" / ")} | ${mine.map((r) => r.peak.toFixed(0)).join(" / ")} |`,
          );
        }
      }
    }
    if (connectRows.length > 0) {
      console.log(
        "\n| black hole | router client | requests that tried it | statuses | p50 of those ms | slowest ms |",
      );
      console.log("| --- | --- | --- | --- | --- | --- |");
      for (const r of connectRows) {
        console.log(
          `| ${r.hole} | ${r.client} | ${r.hits}/12 | ${r.statuses} | ${r.p50Hit.toFixed(0)} | ${r.slowest.toFixed(0)} |`,
        );
      }
    }
    console.log(`\nusage records received by the stub manager: ${usageRecords}`);
  } finally {
    await Promise.all(servers.map((server) => server.stop()));
    for (const cleanup of cleanups) await cleanup();
  }
}
