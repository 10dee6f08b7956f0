/**
 * The simulator's handler behind Hono's router, for `BENCH_HONO=1 bun bench/sim.ts`: measures
 * what Hono would cost on the simulator's hot path (the reason main.ts uses Bun.serve directly).
 * Usage: bun bench/lib/sim-hono-server.ts PORT
 */
import { Hono } from "hono";
import { createSimApp } from "../../agent/sim/app.ts";
import { parseServeArgs } from "../../agent/sim/config.ts";

const port = Number(process.argv[2] ?? 0);
const config = parseServeArgs(
  ["serve", "bench-model", "--time-to-first-token", "0", "--inter-token-latency", "0"],
  { SIM_FAIL_STARTUP: false, SIM_ACCESS_LOG: false },
);
const sim = createSimApp(config);
const app = new Hono();
app.get("/health", (c) => c.body(null, 200));
app.post("/v1/chat/completions", (c) => sim.fetch(c.req.raw));
app.all("*", (c) => sim.fetch(c.req.raw));
Bun.serve({ hostname: "127.0.0.1", port, idleTimeout: 0, fetch: app.fetch });
console.log(`hono variant listening on ${port}`);
