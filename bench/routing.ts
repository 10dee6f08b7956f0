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
 * Workloads (docs/benchmarks.md "Routing" says why these):
 *  - chat: ROUTING_USERS users (96), 8 turns each, ROUTING_CONCURRENCY users at a time
 *    (48), four shared system prompts of ~2,000 tokens (instructions and tool definitions,
 *    as an assistant or agent sends), ~100-token user turns, answers of 1–256 tokens (the
 *    simulator's random mode, ~128 on average); prefill dominates TTFT (ROUTING_PREFILL
 *    tokens/s, 20,000).
 *  - chat-short: the first workload (5 turns, ~500-token system prompts, ~300-token user
 *    messages, 24-token answers), whose ceiling is 79%: kept for comparison.
 *  - unique: single-turn prompts of ~1,200 tokens with nothing shared.
 *  - slowed: the chat workload with replica 0 at a third of the prefill rate and three
 *    times the inter-token latency; its share of requests per policy.
 * BENCH_ONLY=chat,unique,slowed,chat-short picks sections (default all); BENCH_POLICIES picks
 * policies; BENCH_ROUNDS (3) runs each section that many times, the policies interleaved in
 * each round, and reports the median round and per-round ratios against least in-flight
 * (and round-robin, for the chat workloads).
 * Figures: TTFT p50/p99 (client: request sent → first body byte of the stream), requests/s,
 * the engines' prefix-cache hit rate (Σ hits / Σ queries, tokens), the workload's ideal hit
 * rate (every token any engine saw before — a prompt's earlier prefix or an answer it
 * generated — counted as a hit, at the engines' 16-token block granularity: the ceiling for
 * a perfect router with an infinite cache) and the measured as a share of it, load spread
 * (max/mean requests per replica) and replica 0's share of the requests.
 */
import { loadavg } from "node:os";
import { BLOCK_TOKENS, blockHashes, GENERATION_CUE, renderMessage } from "../agent/sim/kv-cache.ts";
import { CHAT_TOKENS_PER_MESSAGE, CHAT_TOKENS_PER_PROMPT, countTokens } from "../agent/sim/text.ts";
import { median, percentiles } from "./lib/load.ts";
import { bunBin, freePort, type SpawnedServer, spawnServer } from "./lib/server.ts";

const alias = "chat";
const users = Number(process.env.ROUTING_USERS ?? 96);
const concurrency = Number(process.env.ROUTING_CONCURRENCY ?? 48);
const prefillRate = Number(process.env.ROUTING_PREFILL ?? 20_000);
const kvTokens = Number(process.env.ROUTING_KV_TOKENS ?? 32_768);

/** A multi-turn chat workload's shape (characters are 4 to the simulator's token). */
type ChatShape = {
  turns: number;
  systemChars: number;
  userChars: number;
  /** max_tokens; with `random` answers are 1–maxTokens tokens, with `echo` the user turn's first ones. */
  maxTokens: number;
  mode: "echo" | "random";
};
const shapes: Record<"chat" | "chat-short", ChatShape> = {
  chat: { turns: 8, systemChars: 8000, userChars: 400, maxTokens: 256, mode: "random" },
  "chat-short": { turns: 5, systemChars: 2000, userChars: 1200, maxTokens: 24, mode: "echo" },
};
/** The no-shared-prefix workload: as many requests as the chat-short one, ~1,200 tokens each. */
const uniqueRequests = users * 5;

type Policy = "round_robin" | "least_in_flight" | "least_loaded" | "prefix_affinity";
const policies: Policy[] = (process.env.BENCH_POLICIES?.split(",") as Policy[] | undefined) ?? [
  "round_robin",
  "least_in_flight",
  "least_loaded",
  "prefix_affinity",
];

type Message = { role: string; content: string };
type Result = {
  ttft: number[];
  requests: number;
  seconds: number;
  hitRate: number;
  idealHitRate: number;
  perReplica: number[];
};

/**
 * The ceiling: a perfect router with an infinite cache. Every full 16-token block any
 * engine has seen (a prompt at its admission, a prompt and its answer at the end) is a hit
 * for every later prompt that starts with it, as the simulator's prefix cache counts
 * (agent/sim/engine.ts `prefill`: whole blocks, the last prompt token always computed).
 */
class IdealCache {
  private readonly seen = new Set<number>();
  queries = 0;
  hits = 0;

  /** A prompt sent: counts its ideal hits and remembers its blocks; returns its rendering. */
  prompt(messages: readonly Message[]): string {
    let tokens = CHAT_TOKENS_PER_PROMPT;
    let rendered = "";
    for (const message of messages) {
      tokens += CHAT_TOKENS_PER_MESSAGE + countTokens(message.content);
      rendered += renderMessage(message.role, message.content);
    }
    const blocks = blockHashes(rendered + GENERATION_CUE);
    let matched = 0;
    while (matched < blocks.length && this.seen.has(blocks[matched] as number)) matched++;
    this.queries += tokens;
    this.hits += Math.max(0, Math.min(matched * BLOCK_TOKENS, tokens - 1));
    for (const block of blocks) this.seen.add(block);
    return rendered;
  }

  /** The answer came back: the engine caches the prompt and the answer. */
  answered(rendered: string, answer: string): void {
    for (const block of blockHashes(rendered + renderMessage("assistant", answer)))
      this.seen.add(block);
  }

  get rate(): number {
    return this.queries > 0 ? this.hits / this.queries : 0;
  }
}

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

const systemPromptsOf = (chars: number) =>
  [0, 1, 2, 3].map((i) => `System ${i}: ${words(10_000 + i, chars)}`);

async function startReplicas(options: {
  loadHeader: boolean;
  slowFirst: boolean;
  mode: "echo" | "random";
}) {
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
          "--mode",
          options.mode,
          "--max-model-len",
          "32768",
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
async function send(routerUrl: string, messages: Message[], maxTokens: number) {
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

async function chatWorkload(
  routers: { url: string }[],
  shape: ChatShape,
  ideal: IdealCache,
): Promise<{ ttft: number[]; n: number }> {
  const ttft: number[] = [];
  const systemPrompts = systemPromptsOf(shape.systemChars);
  let next = 0;
  const worker = async () => {
    for (;;) {
      const user = next++;
      if (user >= users) return;
      const messages: Message[] = [{ role: "system", content: systemPrompts[user % 4] as string }];
      for (let turn = 0; turn < shape.turns; turn++) {
        messages.push({
          role: "user",
          content: `User ${user} turn ${turn}: ${words(user * 100 + turn, shape.userChars)}`,
        });
        const router = routers[(user + turn) % 2] as { url: string };
        const rendered = ideal.prompt(messages);
        const reply = await send(router.url, messages, shape.maxTokens);
        ideal.answered(rendered, reply.answer);
        ttft.push(reply.ttft);
        messages.push({ role: "assistant", content: reply.answer });
      }
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  return { ttft, n: users * shape.turns };
}

async function uniqueWorkload(
  routers: { url: string }[],
  ideal: IdealCache,
): Promise<{ ttft: number[]; n: number }> {
  const ttft: number[] = [];
  const total = uniqueRequests;
  let next = 0;
  const worker = async () => {
    for (;;) {
      const index = next++;
      if (index >= total) return;
      const messages = [
        { role: "user", content: `Request ${index}: ${words(900_000 + index, 4800)}` },
      ];
      const rendered = ideal.prompt(messages);
      const reply = await send((routers[index % 2] as { url: string }).url, messages, 24);
      ideal.answered(rendered, reply.answer);
      ttft.push(reply.ttft);
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  return { ttft, n: total };
}

type Section = "chat" | "chat-short" | "unique" | "slowed";

async function run(policy: Policy, section: Section): Promise<Result> {
  const shape = section === "chat-short" ? shapes["chat-short"] : shapes.chat;
  const replicas = await startReplicas({
    loadHeader: policy !== "least_in_flight",
    slowFirst: section === "slowed",
    mode: section === "unique" ? "echo" : shape.mode,
  });
  const routing = policy === "least_in_flight" ? "least_loaded" : policy;
  const { routers, manager } = await startRouters(routing, replicas);
  try {
    const ideal = new IdealCache();
    const started = performance.now();
    const { ttft, n } = await (section === "unique"
      ? uniqueWorkload(routers, ideal)
      : chatWorkload(routers, shape, ideal));
    const seconds = (performance.now() - started) / 1000;
    const after = await metricsOf(replicas);
    const queries = after.reduce((sum, m) => sum + m.queries, 0);
    const hits = after.reduce((sum, m) => sum + m.hits, 0);
    return {
      ttft,
      requests: n,
      seconds,
      hitRate: queries > 0 ? hits / queries : 0,
      idealHitRate: ideal.rate,
      perReplica: after.map((m) => m.requests),
    };
  } finally {
    await Promise.all([...routers, ...replicas].map((server) => server.stop()));
    manager.stop(true);
  }
}

/** One round of one policy, as the table shows it. */
type Figures = {
  p50: number;
  p99: number;
  rps: number;
  hitRate: number;
  idealHitRate: number;
  spread: number;
  r0Share: number;
  perReplica: number[];
};

function figures(result: Result): Figures {
  const p = percentiles(result.ttft);
  const total = result.perReplica.reduce((a, b) => a + b, 0);
  return {
    p50: p.p50,
    p99: p.p99,
    rps: result.requests / result.seconds,
    hitRate: result.hitRate,
    idealHitRate: result.idealHitRate,
    spread: Math.max(...result.perReplica) / (total / result.perReplica.length),
    r0Share: (result.perReplica[0] ?? 0) / Math.max(1, total),
    perReplica: result.perReplica,
  };
}

const middle = (values: number[]): number => median(values, (value) => value);

/** Each column's median over the rounds (requests per replica: the median-p50 round's). */
function row(policy: string, rounds: Figures[]): string {
  const m = (key: keyof Omit<Figures, "perReplica">) => middle(rounds.map((f) => f[key]));
  const pct = (value: number) => `${(value * 100).toFixed(1)}%`;
  const hitRate = m("hitRate");
  const idealHitRate = m("idealHitRate");
  const ofIdeal = idealHitRate > 0 ? pct(hitRate / idealHitRate) : "–";
  const p50 = m("p50");
  const perReplica = (rounds.find((f) => f.p50 === p50) ?? (rounds[0] as Figures)).perReplica;
  return `| ${policy.padEnd(15)} | ${p50.toFixed(1).padStart(7)} | ${m("p99").toFixed(1).padStart(7)} | ${m("rps").toFixed(1).padStart(6)} | ${pct(hitRate).padStart(6)} | ${pct(idealHitRate).padStart(6)} | ${ofIdeal.padStart(6)} | ${m("spread").toFixed(2)} | ${pct(m("r0Share")).padStart(6)} | ${perReplica.join(" / ")} |`;
}

/**
 * A policy against a baseline, round by round (both ran in the same round, back to back):
 * the median of the per-round ratios of TTFT p50 and p99 and of requests/s, each round's
 * ratio listed. Below 1 for TTFT and above 1 for requests/s is better.
 */
function versus(policy: string, baseline: string, own: Figures[], base: Figures[]): string {
  const ratios = (key: "p50" | "p99" | "rps") =>
    own.map((f, index) => f[key] / (base[index] as Figures)[key]);
  const show = (key: "p50" | "p99" | "rps") => {
    const each = ratios(key);
    return `×${middle(each).toFixed(2)} (${each.map((r) => r.toFixed(2)).join(", ")})`;
  };
  return `  ${policy} / ${baseline}: TTFT p50 ${show("p50")}, p99 ${show("p99")}; req/s ${show("rps")}`;
}

const header = [
  "| policy          | TTFT p50 ms | p99 ms | req/s | hit rate | ideal | of ideal | max/mean | r0 share | requests per replica |",
  "| --------------- | ----------- | ------ | ----- | -------- | ----- | -------- | -------- | -------- | -------------------- |",
];

const describe = (shape: ChatShape) =>
  `${users} users × ${shape.turns} turns, 4 shared system prompts of ~${shape.systemChars / 4} tokens, ~${shape.userChars / 4}-token user turns, ${shape.mode === "random" ? `answers of 1–${shape.maxTokens} tokens` : `${shape.maxTokens}-token answers`}`;
console.log(
  `routing bench: ${concurrency} clients at a time, prefill ${prefillRate} tok/s, KV ${kvTokens} tokens per replica, load average ${loadavg()
    .map((l) => l.toFixed(2))
    .join(" ")}`,
);
const sections: [string, Section][] = [
  [`multi-turn chat: ${describe(shapes.chat)}`, "chat"],
  [`no shared prefixes: ${uniqueRequests} single-turn prompts of ~1,200 tokens`, "unique"],
  [`multi-turn chat, replica 0 slowed (prefill ÷3, ITL ×3): ${describe(shapes.chat)}`, "slowed"],
  [`the first multi-turn workload: ${describe(shapes["chat-short"])}`, "chat-short"],
];
const only = process.env.BENCH_ONLY?.split(",");
const rounds = Math.max(1, Number(process.env.BENCH_ROUNDS ?? 3));
for (const [title, section] of sections) {
  if (only && !only.includes(section)) continue;
  // Rounds interleave the policies, so that a noisy minute on this shared machine falls on
  // all of them: each figure is the median round, each ratio the median of per-round ones.
  const results = new Map<Policy, Figures[]>(policies.map((policy) => [policy, []]));
  for (let round = 0; round < rounds; round++) {
    for (const policy of policies) results.get(policy)?.push(figures(await run(policy, section)));
  }
  console.log(`\n${title} (median of ${rounds} rounds)\n`);
  console.log(header.join("\n"));
  for (const policy of policies) console.log(row(policy, results.get(policy) ?? []));
  console.log("");
  for (const baseline of ["least_in_flight", "round_robin"] as const) {
    const base = results.get(baseline);
    if (!base) continue;
    for (const policy of policies) {
      const own = results.get(policy);
      if (policy !== baseline && own && (baseline === "least_in_flight" || section !== "unique")) {
        console.log(versus(policy, baseline, own, base));
      }
    }
  }
}
