/**
 * Engine simulator benchmark: `bun bench/sim.ts`.
 *  1. latency off, non-stream chat at 64 connections (goal ≥ 20,000 req/s);
 *  2. 1,000 concurrent streams at 10 ms inter-token latency (goal: p99 gap ≤ 20 ms), and
 *     the simulator's memory while they run.
 * Each case runs a few seconds; the load generator runs here, the simulator in a child.
 */
import { formatLoad, formatStreams, runLoad, runStreams } from "./lib/load.ts";
import { bunBin, freePort, spawnServer } from "./lib/server.ts";

const seconds = Number(process.env.BENCH_SECONDS ?? 4);

async function sim(flags: string[], env: Record<string, string> = {}) {
  const port = await freePort();
  const server = await spawnServer({
    argv: [
      bunBin,
      "agent/sim/main.ts",
      "serve",
      "bench-model",
      "--host",
      "127.0.0.1",
      "--port",
      String(port),
      ...flags,
    ],
    env,
    readyUrl: `http://127.0.0.1:${port}/health`,
  });
  return { server, base: `http://127.0.0.1:${port}` };
}

const chat = {
  model: "bench-model",
  messages: [{ role: "user", content: "Say hello to the fleet." }],
};

{
  const { server, base } = await sim(["--time-to-first-token", "0", "--inter-token-latency", "0"]);
  try {
    await runLoad({
      url: `${base}/v1/chat/completions`,
      body: chat,
      concurrency: 64,
      durationMs: 1000,
    });
    const cpu0 = server.cpuMs() ?? 0;
    const result = await runLoad({
      url: `${base}/v1/chat/completions`,
      body: chat,
      concurrency: 64,
      durationMs: seconds * 1000,
    });
    console.log(`non-stream chat, latency off, 64 conns:  ${formatLoad(result)}`);
    const busy = ((server.cpuMs() ?? 0) - cpu0) / result.elapsedMs;
    console.log(
      `  simulator CPU: ${busy.toFixed(2)} cores (${((busy * 1e6) / result.rps).toFixed(1)} µs per request)`,
    );
    const health = await runLoad({ url: `${base}/health`, concurrency: 64, durationMs: 2000 });
    console.log(`GET /health, 64 conns:                   ${formatLoad(health)}`);
  } finally {
    await server.stop();
  }
}

if (process.env.BENCH_HONO === "1") {
  const port = await freePort();
  const server = await spawnServer({
    argv: [bunBin, "bench/lib/sim-hono-server.ts", String(port)],
    readyUrl: `http://127.0.0.1:${port}/health`,
  });
  try {
    const url = `http://127.0.0.1:${port}/v1/chat/completions`;
    await runLoad({ url, body: chat, concurrency: 64, durationMs: 1000 });
    const cpu0 = server.cpuMs() ?? 0;
    const result = await runLoad({ url, body: chat, concurrency: 64, durationMs: seconds * 1000 });
    const busy = ((server.cpuMs() ?? 0) - cpu0) / result.elapsedMs;
    console.log(`same handler behind Hono, 64 conns:      ${formatLoad(result)}`);
    console.log(
      `  server CPU: ${busy.toFixed(2)} cores (${((busy * 1e6) / result.rps).toFixed(1)} µs per request)`,
    );
  } finally {
    await server.stop();
  }
}

{
  const streams = Number(process.env.BENCH_STREAMS ?? 1000);
  const { server, base } = await sim([
    "--time-to-first-token",
    "20",
    "--inter-token-latency",
    "10",
    "--max-num-seqs",
    String(streams),
  ]);
  try {
    let peak = server.rssMiB() ?? 0;
    const idle = peak;
    const sampler = setInterval(() => {
      peak = Math.max(peak, server.rssMiB() ?? 0);
    }, 200);
    // 200 tokens at 10 ms ≈ 2 s per stream: each connection runs a couple of streams.
    const cpu0 = server.cpuMs() ?? 0;
    const self0 = process.cpuUsage();
    const result = await runStreams({
      url: `${base}/v1/chat/completions`,
      body: { ...chat, stream: true, max_tokens: 200, ignore_eos: true },
      concurrency: streams,
      durationMs: seconds * 1000,
    });
    clearInterval(sampler);
    const serverCpu = ((server.cpuMs() ?? 0) - cpu0) / result.elapsedMs;
    const self = process.cpuUsage(self0);
    const clientCpu = (self.user + self.system) / 1000 / result.elapsedMs;
    console.log(`${streams} streams, ttft 20 ms, itl 10 ms:   ${formatStreams(result)}`);
    console.log(
      `simulator RSS: idle ${idle.toFixed(0)} MiB, peak during streams ${peak.toFixed(0)} MiB`,
    );
    console.log(
      `CPU (cores busy): simulator ${serverCpu.toFixed(2)}, load generator ${clientCpu.toFixed(2)}`,
    );
  } finally {
    await server.stop();
  }
}
