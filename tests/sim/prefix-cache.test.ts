import { describe, expect, test } from "bun:test";
import { createSimApp } from "../../agent/sim/app.ts";
import { parseServeArgs } from "../../agent/sim/config.ts";
import { Engine, type Seq } from "../../agent/sim/engine.ts";
import { BLOCK_TOKENS, blockHashes, PrefixCache } from "../../agent/sim/kv-cache.ts";
import { metric } from "../../devkit/metrics.ts";

const noEnv = { SIM_FAIL_STARTUP: false, SIM_ACCESS_LOG: false };
const text = (seed: string, chars: number) =>
  seed.repeat(Math.ceil(chars / seed.length)).slice(0, chars);

describe("simulator prefix cache", () => {
  test("blocks are keyed by chain: a block matches only after the same prefix", () => {
    const a = blockHashes(text("a", 64) + text("b", 64) + text("c", 30));
    const b = blockHashes(text("x", 64) + text("b", 64));
    expect(a.length).toBe(2); // the partial third block has no key
    expect(a[1]).not.toBe(b[1]); // same tokens, different parent
    const cache = new PrefixCache(10);
    cache.insert(a);
    expect(cache.lookup(b)).toBe(0);
    expect(cache.lookup(blockHashes(text("a", 64) + text("b", 64) + text("z", 64)))).toBe(2);
  });

  test("evicts the least recently used blocks beyond its capacity", () => {
    const cache = new PrefixCache(4);
    const first = blockHashes(text("p", 128)); // 2 blocks
    const second = blockHashes(text("q", 128));
    cache.insert(first);
    cache.insert(second);
    expect(cache.lookup(first)).toBe(2); // touched: now the most recent
    cache.insert(blockHashes(text("r", 128)));
    expect(cache.size).toBe(4);
    expect(cache.lookup(second)).toBe(0); // the LRU went
    expect(cache.lookup(first)).toBe(2);
  });

  test("time to first token is ttft plus the uncached tokens at the prefill rate, prefills in series", () => {
    let clock = 1000;
    const engine = new Engine({
      modelName: "m",
      maxNumSeqs: 8,
      maxModelLen: 8192,
      ttftMs: 5,
      itlMs: 10,
      kvCacheTokens: 65_536,
      prefillTokensPerS: 10_000,
      now: () => clock,
    });
    const prompt = text("system prompt ", 64 * 100); // 100 blocks = 1,600 tokens
    const seq = (promptTokens: number, blocks: number[]): Seq => ({
      promptTokens,
      output: ["x"],
      finishReason: "stop",
      stream: true,
      listener: { done: () => {} },
      arrivedAt: 0,
      admittedAt: 0,
      emitted: 0,
      state: "waiting",
      timer: null,
      prefixBlocks: blocks,
      finalBlocks: null,
      prefillMs: 0,
      cachedTokens: 0,
    });
    const cold = seq(1_600, blockHashes(prompt));
    engine.submit(cold);
    expect(cold.cachedTokens).toBe(0);
    expect(cold.prefillMs).toBeCloseTo(5 + 160, 6); // 1,600 tokens at 10k/s
    // Same prefix + 1 more block, admitted at once: 1,600 cached, 16 to compute, after the
    // cold prefill still running (160 ms lane).
    const warm = seq(1_616, blockHashes(prompt + text("u", 64)));
    engine.submit(warm);
    expect(warm.cachedTokens).toBe(1_600);
    expect(warm.prefillMs).toBeCloseTo(5 + 160 + 1.6, 6);
    clock += 1000; // lane idle again
    const again = seq(1_616, blockHashes(prompt + text("u", 64)));
    engine.submit(again);
    expect(again.cachedTokens).toBe(1_615); // a full hit still computes the last token
    expect(again.prefillMs).toBeCloseTo(5 + 0.1, 6);
    const text2 = engine.renderMetrics({ cacheConfig: {} });
    expect(metric(text2, "vllm:prefix_cache_queries_total", { model_name: "m", engine: "0" })).toBe(
      1_600 + 1_616 + 1_616,
    );
    expect(metric(text2, "vllm:prefix_cache_hits_total", { model_name: "m", engine: "0" })).toBe(
      1_600 + 1_615,
    );
    for (const s of [cold, warm, again]) engine.abort(s);
  });

  const chat = (messages: { role: string; content: string }[]) =>
    new Request("http://sim/v1/chat/completions", {
      method: "POST",
      body: JSON.stringify({ model: "m", messages, max_tokens: 64 }),
    });
  const metricsOf = async (sim: ReturnType<typeof createSimApp>) =>
    (await sim.fetch(new Request("http://sim/metrics"))).text();

  test("a chat's next turn hits its previous turn's prompt and answer; another system prompt does not", async () => {
    const sim = createSimApp(
      parseServeArgs(
        [
          "serve",
          "m",
          "--time-to-first-token",
          "0",
          "--inter-token-latency",
          "0",
          "--prefill-rate",
          "1000000",
        ],
        noEnv,
      ),
    );
    const system = { role: "system", content: text("You are a careful assistant. ", 4000) };
    const turn1 = [system, { role: "user", content: "What is a KV cache, in one line?" }];
    const first = await sim.fetch(chat(turn1));
    const answer = ((await first.json()) as { choices: { message: { content: string } }[] })
      .choices[0]?.message.content;
    let page = await metricsOf(sim);
    const q1 = metric(page, "vllm:prefix_cache_queries_total");
    expect(q1).toBeGreaterThan(1000);
    expect(metric(page, "vllm:prefix_cache_hits_total")).toBe(0);
    const turn2 = [
      ...turn1,
      { role: "assistant", content: answer ?? "" },
      { role: "user", content: "And why does routing care?" },
    ];
    await (await sim.fetch(chat(turn2))).json();
    page = await metricsOf(sim);
    const q2 = metric(page, "vllm:prefix_cache_queries_total") - q1;
    const hits2 = metric(page, "vllm:prefix_cache_hits_total");
    // Everything but the new user message and the cue (and the partial block before it).
    expect(hits2).toBeGreaterThan(q2 - 30);
    expect(hits2 % BLOCK_TOKENS).toBe(0);
    const other = { role: "system", content: text("You answer in French only. ", 4000) };
    await (await sim.fetch(chat([other, { role: "user", content: "Bonjour" }]))).json();
    page = await metricsOf(sim);
    expect(metric(page, "vllm:prefix_cache_hits_total")).toBe(hits2);
    expect(page).toContain('vllm:prefix_cache_hits_total{engine="0",model_name="m"}');
  });

  test("--no-enable-prefix-caching: no hits, and cache_config_info says so", async () => {
    const sim = createSimApp(
      parseServeArgs(
        [
          "serve",
          "m",
          "--time-to-first-token",
          "0",
          "--inter-token-latency",
          "0",
          "--no-enable-prefix-caching",
        ],
        noEnv,
      ),
    );
    const messages = [{ role: "system", content: text("Same every time. ", 2000) }];
    for (let i = 0; i < 2; i++) await (await sim.fetch(chat(messages))).json();
    const page = await metricsOf(sim);
    expect(metric(page, "vllm:prefix_cache_hits_total")).toBe(0);
    expect(page).toContain('enable_prefix_caching="False"');
  });

  test("SIM_LOAD_HEADER: /proxy answers carry x-fleet-load as an agent's do; plain /v1 answers do not", async () => {
    const sim = createSimApp(
      parseServeArgs(["serve", "m", "--time-to-first-token", "0", "--inter-token-latency", "0"], {
        ...noEnv,
        SIM_LOAD_HEADER: "1",
      }),
    );
    const body = JSON.stringify({ model: "m", messages: [{ role: "user", content: "hi" }] });
    const proxied = await sim.fetch(
      new Request("http://sim/proxy/m/v1/chat/completions", { method: "POST", body }),
    );
    expect(proxied.headers.get("x-fleet-load")).toBe("r=0;w=0;kv=0");
    const plain = await sim.fetch(
      new Request("http://sim/v1/chat/completions", { method: "POST", body }),
    );
    expect(plain.headers.get("x-fleet-load")).toBeNull();
  });
});
