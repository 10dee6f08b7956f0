/**
 * Agent proxy benchmark: `bun bench/agent-proxy.ts`.
 * Non-stream chat (simulator latency off) at 1 and 64 connections through
 *  (a) the simulator direct, (b) a bare Hono fetch-proxy written here, (c) the agent's
 *  authenticated `/proxy/{alias}/v1/...` path;
 * then the agent's memory idle and with 1,000 streams open through it.
 * Goals: (c) ≥ 80% of (b)'s req/s; (c) adds ≤ 0.5 ms p50 over (a) at 1 connection; agent
 * idle RSS ≤ 80 MB. The engine is launched by the agent itself (VLLM_BIN=agent/sim/vllm),
 * the bare proxy is this file run as `bun bench/agent-proxy.ts bare-proxy PORT UPSTREAM`.
 */
import { Hono } from "hono";
import { joinedAgentDataDir, simAgentEnv } from "../devkit/fleet.ts";
import { formatLoad, formatStreams, type LoadResult, runLoad, runStreams } from "./lib/load.ts";
import { bunBin, freePort, rssMiB, spawnServer } from "./lib/server.ts";

if (process.argv[2] === "bare-proxy") {
  // (b): the least a Hono proxy can do: forward method, headers, body and abort signal.
  const [port, upstream] = [Number(process.argv[3]), process.argv[4]];
  const app = new Hono();
  app.all("/proxy/:alias/v1/*", (c) => {
    const path = c.req.path.slice(c.req.path.indexOf("/v1/"));
    return fetch(`${upstream}${path}`, {
      method: c.req.method,
      headers: c.req.raw.headers,
      body: c.req.raw.body,
      signal: c.req.raw.signal,
    });
  });
  Bun.serve({ hostname: "127.0.0.1", port, fetch: app.fetch, idleTimeout: 0 });
} else {
  await main();
}

async function main(): Promise<void> {
  const seconds = Number(process.env.BENCH_SECONDS ?? 3);
  // An agent that has joined (its credentials file is there; no manager runs): its API and
  // proxy take its agent credential, checked on every request as in production.
  const token = "fa_bench-agent-credential";
  const auth = { authorization: `Bearer ${token}` };
  const agentPort = await freePort();
  const managerUrl = "http://127.0.0.1:9";
  const agent = await spawnServer({
    argv: [bunBin, "agent/main.ts"],
    env: {
      ...simAgentEnv({
        workerId: "bench-agent",
        port: agentPort,
        managerUrl,
        fleetToken: "bench-join-token",
      }),
      AGENT_DATA_DIR: joinedAgentDataDir({
        workerId: "bench-agent",
        managerUrl,
        agentToken: token,
      }),
      MANAGER_RETRY_MAX_S: "60",
      ENGINE_HEALTH_POLL_MS: "100",
      LOG_LEVEL: "error",
    },
    readyUrl: `http://127.0.0.1:${agentPort}/health`,
  });
  const agentUrl = `http://127.0.0.1:${agentPort}`;
  let bare: Awaited<ReturnType<typeof spawnServer>> | null = null;
  try {
    const launch = async (alias: string, extra_args: string[]) => {
      const res = await fetch(`${agentUrl}/v1/instances`, {
        method: "POST",
        headers: { ...auth, "content-type": "application/json" },
        body: JSON.stringify({ alias, model_name: `bench/${alias}`, extra_args }),
      });
      const report = (await res.json()) as { port: number };
      for (;;) {
        const now = await fetch(`${agentUrl}/v1/instances/${alias}`, { headers: auth });
        if (((await now.json()) as { status: string }).status === "ready") return report.port;
        await Bun.sleep(100);
      }
    };
    const fastPort = await launch("fast", [
      "--time-to-first-token",
      "0",
      "--inter-token-latency",
      "0",
    ]);
    const streamPort = await launch("streams", [
      "--inter-token-latency",
      "20",
      "--max-num-seqs",
      "2048",
    ]);
    await Bun.sleep(500);
    const idleRss = rssMiB(agent.pid);

    const barePort = await freePort();
    bare = await spawnServer({
      argv: [
        bunBin,
        "bench/agent-proxy.ts",
        "bare-proxy",
        String(barePort),
        `http://127.0.0.1:${fastPort}`,
      ],
      readyUrl: `http://127.0.0.1:${barePort}/proxy/fast/v1/models`,
    });

    const chat = {
      model: "fast",
      messages: [{ role: "user", content: "Say hello to the fleet." }],
    };
    const targets = [
      {
        name: "(a) simulator direct",
        url: `http://127.0.0.1:${fastPort}/v1/chat/completions`,
        headers: {},
      },
      {
        name: "(b) bare Hono proxy ",
        url: `http://127.0.0.1:${barePort}/proxy/fast/v1/chat/completions`,
        headers: {},
      },
      {
        name: "(c) agent /proxy    ",
        url: `${agentUrl}/proxy/fast/v1/chat/completions`,
        headers: auth,
      },
    ];
    const results = new Map<string, LoadResult>();
    for (const concurrency of [1, 64]) {
      for (const t of targets) {
        // Warm up connections and JIT, then measure.
        await runLoad({ url: t.url, body: chat, headers: t.headers, concurrency, durationMs: 500 });
        const result = await runLoad({
          url: t.url,
          body: chat,
          headers: t.headers,
          concurrency,
          durationMs: seconds * 1000,
        });
        results.set(`${t.name}@${concurrency}`, result);
        console.log(`${t.name} c=${String(concurrency).padStart(2)}  ${formatLoad(result)}`);
      }
    }
    const get = (name: string, c: number) =>
      results.get(`${targets.find((t) => t.name.startsWith(name))?.name}@${c}`);
    for (const c of [1, 64]) {
      const [a, b, cc] = [get("(a)", c), get("(b)", c), get("(c)", c)];
      if (!a || !b || !cc) continue;
      const p50Goal = c === 1 ? " (goal ≤ 0.5 ms)" : "";
      console.log(
        `c=${c}: agent/bare throughput ${((cc.rps / b.rps) * 100).toFixed(0)}% (goal ≥ 80%); p50 added over direct: agent +${(cc.latencyMs.p50 - a.latencyMs.p50).toFixed(3)} ms${p50Goal}, bare +${(b.latencyMs.p50 - a.latencyMs.p50).toFixed(3)} ms`,
      );
    }

    // 1,000 streams open through the agent at once: ~200 tokens at 20 ms each (~4 s a stream).
    let peakRss = 0;
    const sampler = setInterval(() => {
      peakRss = Math.max(peakRss, rssMiB(agent.pid) ?? 0);
    }, 100);
    const streams = await runStreams({
      url: `${agentUrl}/proxy/streams/v1/completions`,
      headers: auth,
      body: { model: "streams", prompt: "stream", max_tokens: 200, ignore_eos: true, stream: true },
      concurrency: 1000,
      requests: 1000,
    });
    clearInterval(sampler);
    console.log(`1,000 streams via agent: ${formatStreams(streams)}`);
    console.log(
      `agent RSS: idle ${idleRss?.toFixed(1)} MiB (goal ≤ 80 MB), peak with 1,000 open streams ${peakRss.toFixed(1)} MiB (engine on port ${streamPort})`,
    );
  } finally {
    await bare?.stop();
    await agent.stop();
  }
}
