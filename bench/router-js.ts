/**
 * The router's own JavaScript per request, in one process: `bun bench/router-js.ts [CHECKOUT...]`.
 *
 * Each checkout's router app (its router/app.ts and router/usage-batcher.ts; this one when
 * none is named) answers `POST /v1/chat/completions` through `app.fetch`, 64 requests at a
 * time, from a route table of two replicas whose upstream `fetch` hands back a canned
 * completion at once: no sockets, no server, no client, so what is left is the router's
 * own work (body, policy, balancer, attempt, answer checks, usage scan, metrics, usage
 * record) plus Request and Response objects. The control row makes and reads those objects
 * alone. CPU time per request (process.cpuUsage) in BENCH_ROUNDS (9) interleaved rounds over
 * BENCH_SECONDS (5); a figure is the median round, and "vs first" the median of the
 * per-round ratios against the first checkout. Run it with a worktree at the commit to
 * compare against (`git worktree add --detach ../base main`) to measure a change side by
 * side: the spread of repeated rounds is a few per cent even on a busy machine, where
 * bench/gateway.ts's figures move by tens.
 *
 * BENCH_ROUTING sets the routes' policy (default prefix_affinity).
 */
import type { createApp as CreateApp } from "../router/app.ts";
import type { UsageBatcher as UsageBatcherClass } from "../router/usage-batcher.ts";
import { repoRoot } from "./lib/server.ts";

type RouterModules = {
  createApp: typeof CreateApp;
  UsageBatcher: typeof UsageBatcherClass;
};

const checkouts = process.argv.length > 2 ? process.argv.slice(2) : [repoRoot];
const seconds = Number(process.env.BENCH_SECONDS ?? 5);
const rounds = Number(process.env.BENCH_ROUNDS ?? 9);
const concurrency = 64;

const answer = new TextEncoder().encode(
  JSON.stringify({
    id: "chatcmpl-bench",
    object: "chat.completion",
    created: 1,
    model: "bench",
    choices: [
      {
        index: 0,
        message: { role: "assistant", content: "Hello, fleet." },
        finish_reason: "stop",
      },
    ],
    usage: { prompt_tokens: 21, completion_tokens: 4, total_tokens: 25 },
  }),
);
const upstream = async () =>
  new Response(answer, {
    headers: { "content-type": "application/json", "content-length": String(answer.byteLength) },
  });
const replica = (index: number) => ({
  alias: "bench",
  model_name: "org/bench",
  worker_id: `w${index}`,
  worker_url: `http://127.0.0.1:${9000 + index}`,
  vllm_port: null,
  created_at: new Date().toISOString(),
  instance_id: `w${index}-1`,
  ready: true,
  agent_token: `fa_bench-${index}`,
  max_model_len: null,
  routing: process.env.BENCH_ROUTING ?? "prefix_affinity",
});
const snapshot = { version: "1", routes: [replica(0), replica(1)], api_keys: [] };
const body = JSON.stringify({
  model: "bench",
  messages: [
    { role: "system", content: "You are the fleet's helpful assistant." },
    { role: "user", content: "Say hello to the fleet." },
  ],
});
const request = () =>
  new Request("http://127.0.0.1:8080/v1/chat/completions", {
    method: "POST",
    headers: {
      host: "127.0.0.1:8080",
      "content-type": "application/json",
      "content-length": String(body.length),
      "user-agent": "bench",
    },
    body,
  });

type Handler = (request: Request) => Response | Promise<Response>;
const rows: { name: string; handle: Handler }[] = [
  { name: "control: Request and Response only", handle: () => new Response(answer) },
];
for (const checkout of checkouts) {
  const { createApp } = (await import(`${checkout}/router/app.ts`)) as RouterModules;
  const { UsageBatcher } = (await import(`${checkout}/router/usage-batcher.ts`)) as RouterModules;
  // The usage batcher as a router runs it (JSON for the manager every second), its POST
  // answered at once.
  const usage = new UsageBatcher({
    managerUrl: "http://127.0.0.1:9",
    fetch: async () => Response.json({ ok: true }),
  });
  usage.start();
  const held = new WeakSet<Request>();
  const app = createApp({
    routes: { current: () => snapshot },
    usage,
    fetch: upstream,
    streamFetch: upstream,
    clientAddress: () => "127.0.0.1",
    idleTimer: {
      hold: (incoming) => void held.add(incoming),
      release: (incoming) => void held.delete(incoming),
    },
  });
  rows.push({ name: checkout, handle: (incoming) => app.fetch(incoming) });
}

async function cpuPerRequest(handle: Handler, durationMs: number): Promise<number> {
  let served = 0;
  const stopAt = performance.now() + durationMs;
  const before = process.cpuUsage();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (performance.now() < stopAt) {
        const response = await handle(request());
        if (response.status !== 200) {
          throw new Error(`${response.status}: ${await response.text()}`);
        }
        await response.arrayBuffer();
        served++;
      }
    }),
  );
  const used = process.cpuUsage(before);
  return (used.user + used.system) / served;
}

const median = (values: number[]) =>
  [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)] ?? Number.NaN;

for (const row of rows) await cpuPerRequest(row.handle, 500);
const perRow = rows.map(() => [] as number[]);
for (let round = 0; round < rounds; round++) {
  for (const [index, row] of rows.entries()) {
    perRow[index]?.push(await cpuPerRequest(row.handle, (seconds * 1000) / rounds));
  }
}
const first = perRow[1] ?? [];
console.log("| router app | µs/request | vs first | rounds |\n| --- | --- | --- | --- |");
for (const [index, row] of rows.entries()) {
  const values = perRow[index] ?? [];
  const ratio = median(values.map((value, round) => value / (first[round] ?? Number.NaN)));
  console.log(
    `| ${row.name} | ${median(values).toFixed(2)} | ${index === 0 ? "-" : `${(ratio * 100).toFixed(0)}%`} | ${values.map((value) => value.toFixed(1)).join(", ")} |`,
  );
}
process.exit(0);
