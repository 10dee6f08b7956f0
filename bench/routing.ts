/**
 * Routing benchmark: `bun bench/routing.ts`.
 *
 * Four simulated replicas (agent/sim with a prefix cache, --prefill-rate, SIM_LOAD_HEADER so
 * that their `/proxy` answers carry `x-fleet-load` as an agent's do) behind two standalone
 * routers (bun router/main.ts) that split the client traffic: turn t of user u goes through
 * router (u + t) mod 2, so a conversation's turns cross routers. Per policy, fresh replicas
 * (cold caches) and fresh routers:
 *  - round_robin; least in-flight (today's: `least_loaded` with replicas that send no load
 *    header, so the router sees only its own requests); least_loaded (engine load);
 *    prefix_affinity.
 * Workloads:
 *  - chat: ROUTING_USERS users (96), ROUTING_TURNS turns each (5), ROUTING_CONCURRENCY users
 *    at a time (48), four shared system prompts of ~500 tokens, ~300-token user messages,
 *    24-token answers; prefill dominates TTFT (ROUTING_PREFILL tokens/s, 20,000).
 *  - unique: single-turn prompts of ~1,200 tokens with nothing shared.
 *  - slowed: the chat workload with replica 0 at a third of the prefill rate and three
 *    times the inter-token latency; its share of requests per policy.
 * Figures: TTFT p50/p99 (client: request sent → first body byte of the stream), requests/s,
 * the engines' prefix-cache hit rate (Σ hits / Σ queries, tokens), load spread (max/mean
 * requests per replica).
 */
import { percentiles } from "./lib/load.ts";
import { bunBin, freePort, type SpawnedServer, spawnServer } from "./lib/server.ts";

const alias = "chat";
const users = Number(process.env.ROUTING_USERS ?? 96);
const turns = Number(process.env.ROUTING_TURNS ?? 5);
const concurrency = Number(process.env.ROUTING_CONCURRENCY ?? 48);
const prefillRate = Number(process.env.ROUTING_PREFILL ?? 20_000);
const kvTokens = Number(process.env.ROUTING_KV_TOKENS ?? 32_768);
const maxTokens = 24;

type Policy = "round_robin" | "least_in_flight" | "least_loaded" | "prefix_affinity";
const policies: Policy[] = ["round_robin", "least_in_flight", "least_loaded", "prefix_affinity"];

type Message = { role: string; content: string };
type Result = {
  ttft: number[];
  requests: number;
  seconds: number;
  hitRate: number;
  perReplica: number[];
};

function words(seed: number, chars: number): string {
  // Deterministic filler distinct per seed: different text from the first characters on.
  let state = seed * 2_654_435_761 + 1;
  let out = "";
  while (out.length < chars) {
    state = (state * 1_103_515_245 + 12_345) % 2 ** 31;
    out += `${(state % 100_000).toString(36)} `;
  }
  return out.slice(0, chars);
}

const systemPrompts = [0, 1, 2, 3].map((i) => `System ${i}: ${words(10_000 + i, 2000)}`);

async function startReplicas(options: { loadHeader: boolean; slowFirst: boolean }) {
  return Promise.all(
    [0, 1, 2, 3].map(async (index) => {
      const port = await freePort();
      const slow = options.slowFirst && index === 0;
      return spawnServer({
        argv: [
          bunBin,
          "agent/sim/main.ts",
          "serve",
          `org/${alias}`,
          "--host",
          "127.0.0.1",
          "--port",
          String(port),
          "--served-model-name",
          alias,
          "--time-to-first-token",
          "2",
          "--inter-token-latency",
          String(slow ? 9 : 3),
          "--prefill-rate",
          String(slow ? prefillRate / 3 : prefillRate),
        ],
        env: {
          SIM_KV_CACHE_TOKENS: String(kvTokens),
          SIM_LOAD_HEADER: options.loadHeader ? "1" : "0",
        },
        readyUrl: `http://127.0.0.1:${port}/health`,
      }).then((server) => Object.assign(server, { url: `http://127.0.0.1:${port}` }));
    }),
  );
}

type Replica = SpawnedServer & { url: string };

async function startRouters(routing: string, replicas: Replica[]) {
  const routes = replicas.map((replica, index) => ({
    alias,
    model_name: `org/${alias}`,
    worker_id: `w${index}`,
    worker_url: replica.url,
    vllm_port: null,
    created_at: new Date().toISOString(),
    instance_id: `w${index}-1`,
    ready: true,
    agent_token: null,
    routing,
  }));
  // A stub manager: the route table and a usage sink.
  const manager = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    async fetch(request) {
      const path = new URL(request.url).pathname;
      if (path === "/v1/routes")
        return Response.json({ version: "1", routes, api_keys: [] }, { headers: { etag: '"1"' } });
      if (path === "/v1/usage") {
        await request.arrayBuffer();
        return Response.json({ ok: true });
      }
      return new Response(null, { status: 404 });
    },
  });
  const routers = await Promise.all(
    [0, 1].map(async () => {
      const port = await freePort();
      const server = await spawnServer({
        argv: [bunBin, "router/main.ts"],
        env: {
          MANAGER_URL: `http://127.0.0.1:${manager.port}`,
          ROUTER_TOKEN: "fr_bench-router-credential",
          HOST: "127.0.0.1",
          PORT: String(port),
          LOG_LEVEL: "error",
          BUN_CONFIG_MAX_HTTP_REQUESTS: "4096",
        },
        readyUrl: `http://127.0.0.1:${port}/healthz`,
      });
      return Object.assign(server, { url: `http://127.0.0.1:${port}` });
    }),
  );
  return { routers, manager };
}

/** One streamed chat request; resolves with its TTFT (ms) and the answer text. */
async function send(routerUrl: string, messages: Message[]) {
  const started = performance.now();
  const response = await fetch(`${routerUrl}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ model: alias, messages, max_tokens: maxTokens, stream: true }),
  });
  if (response.status !== 200 || !response.body)
    throw new Error(`HTTP ${response.status}: ${await response.text()}`);
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let ttft = -1;
  let text = "";
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    if (ttft < 0) ttft = performance.now() - started;
    text += decoder.decode(value, { stream: true });
  }
  let answer = "";
  for (const match of text.matchAll(/"delta":\{"content":("(?:[^"\\]|\\.)*")\}/g))
    answer += JSON.parse(match[1] as string) as string;
  return { ttft, answer };
}

async function metricsOf(replicas: Replica[]) {
  return Promise.all(
    replicas.map(async (replica) => {
      const text = await (await fetch(`${replica.url}/metrics`)).text();
      const value = (name: string) => {
        let sum = 0;
        for (const line of text.split("\n"))
          if (line.startsWith(name)) sum += Number(line.slice(line.lastIndexOf(" ") + 1));
        return sum;
      };
      return {
        queries: value("vllm:prefix_cache_queries_total"),
        hits: value("vllm:prefix_cache_hits_total"),
        requests: value("vllm:request_success_total"),
      };
    }),
  );
}

async function chatWorkload(routers: { url: string }[]): Promise<{ ttft: number[]; n: number }> {
  const ttft: number[] = [];
  let next = 0;
  const worker = async () => {
    for (;;) {
      const user = next++;
      if (user >= users) return;
      const messages: Message[] = [{ role: "system", content: systemPrompts[user % 4] as string }];
      for (let turn = 0; turn < turns; turn++) {
        messages.push({
          role: "user",
          content: `User ${user} turn ${turn}: ${words(user * 100 + turn, 1200)}`,
        });
        const router = routers[(user + turn) % 2] as { url: string };
        const reply = await send(router.url, messages);
        ttft.push(reply.ttft);
        messages.push({ role: "assistant", content: reply.answer });
      }
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  return { ttft, n: users * turns };
}

async function uniqueWorkload(routers: { url: string }[]): Promise<{ ttft: number[]; n: number }> {
  const ttft: number[] = [];
  const total = users * turns;
  let next = 0;
  const worker = async () => {
    for (;;) {
      const index = next++;
      if (index >= total) return;
      const reply = await send((routers[index % 2] as { url: string }).url, [
        { role: "user", content: `Request ${index}: ${words(900_000 + index, 4800)}` },
      ]);
      ttft.push(reply.ttft);
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  return { ttft, n: total };
}

async function run(
  policy: Policy,
  workload: "chat" | "unique",
  options: { slowFirst?: boolean } = {},
): Promise<Result> {
  const replicas = await startReplicas({
    loadHeader: policy !== "least_in_flight",
    slowFirst: options.slowFirst ?? false,
  });
  const routing = policy === "least_in_flight" ? "least_loaded" : policy;
  const { routers, manager } = await startRouters(routing, replicas);
  try {
    const started = performance.now();
    const { ttft, n } = await (workload === "chat"
      ? chatWorkload(routers)
      : uniqueWorkload(routers));
    const seconds = (performance.now() - started) / 1000;
    const after = await metricsOf(replicas);
    const queries = after.reduce((sum, m) => sum + m.queries, 0);
    const hits = after.reduce((sum, m) => sum + m.hits, 0);
    return {
      ttft,
      requests: n,
      seconds,
      hitRate: queries > 0 ? hits / queries : 0,
      perReplica: after.map((m) => m.requests),
    };
  } finally {
    await Promise.all([...routers, ...replicas].map((server) => server.stop()));
    manager.stop(true);
  }
}

function row(policy: string, result: Result): string {
  const p = percentiles(result.ttft);
  const mean = result.perReplica.reduce((a, b) => a + b, 0) / result.perReplica.length;
  const spread = Math.max(...result.perReplica) / mean;
  return `| ${policy.padEnd(15)} | ${p.p50.toFixed(1).padStart(7)} | ${p.p99.toFixed(1).padStart(7)} | ${(result.requests / result.seconds).toFixed(1).padStart(6)} | ${(result.hitRate * 100).toFixed(1).padStart(5)}% | ${spread.toFixed(2)} | ${result.perReplica.join(" / ")} |`;
}

const header = [
  "| policy          | TTFT p50 ms | p99 ms | req/s | hit rate | max/mean | requests per replica |",
  "| --------------- | ----------- | ------ | ----- | -------- | -------- | -------------------- |",
];

console.log(
  `routing bench: ${users} users × ${turns} turns, ${concurrency} at a time, prefill ${prefillRate} tok/s, KV ${kvTokens} tokens per replica`,
);
const sections: [string, "chat" | "unique", boolean][] = [
  ["multi-turn chat (4 shared system prompts)", "chat", false],
  ["no shared prefixes", "unique", false],
  ["multi-turn chat, replica 0 slowed (prefill ÷3, ITL ×3)", "chat", true],
];
const only = process.env.BENCH_ONLY?.split(",");
for (const [title, workload, slow] of sections) {
  if (only && !only.includes(slow ? "slowed" : workload)) continue;
  console.log(`\n${title}\n`);
  console.log(header.join("\n"));
  for (const policy of policies)
    console.log(row(policy, await run(policy, workload, { slowFirst: slow })));
}
