import { BLOCK_TOKENS, PrefixCache } from "./kv-cache.ts";
import {
  gauge,
  Histogram,
  ITL_BUCKETS,
  num,
  REQUEST_LATENCY_BUCKETS,
  TTFT_BUCKETS,
  tokenBuckets,
} from "./metrics.ts";

export type FinishReason = "stop" | "length";

/** What a sequence tells its owner (the HTTP handler) as the engine works on it. */
export type SeqListener = {
  /** Output tokens [from, to) are ready (only called for streaming sequences). */
  tokens?(from: number, to: number): void;
  done(reason: FinishReason): void;
};

/** One request inside the engine: prompt size, the output it will produce, its timers. */
export type Seq = {
  promptTokens: number;
  output: string[];
  finishReason: FinishReason;
  stream: boolean;
  listener: SeqListener;
  arrivedAt: number;
  admittedAt: number;
  emitted: number;
  state: "waiting" | "running" | "finished" | "aborted";
  timer: ReturnType<typeof setTimeout> | null;
  /** Chain hashes of the prompt's full KV blocks (kv-cache.ts blockHashes); empty: none. */
  prefixBlocks: readonly number[];
  /** The blocks of prompt + answer, cached when the sequence finishes (next turn's prefix). */
  finalBlocks: (() => readonly number[]) | null;
  /** Admission to first token: `ttftMs` plus the prefill of the uncached prompt tokens. */
  prefillMs: number;
  /** Prompt tokens found in the prefix cache at admission. */
  cachedTokens: number;
};

export type EngineOptions = {
  modelName: string;
  maxNumSeqs: number;
  maxModelLen: number;
  ttftMs: number;
  itlMs: number;
  kvCacheTokens: number;
  /**
   * Prefill throughput in prompt tokens per second; 0 = prefill costs only `ttftMs`.
   * Prefills run one after another at this rate (a GPU is compute-bound in prefill), so a
   * request's first token waits for the uncached tokens of the prefills admitted before it.
   */
  prefillTokensPerS?: number;
  /** vLLM's automatic prefix caching (on by default since V1). */
  prefixCaching?: boolean;
  now?: () => number;
};

/**
 * The simulated scheduler. Like vLLM it runs at most `maxNumSeqs` sequences and keeps the
 * rest in an unbounded FIFO (never rejects). A running sequence produces its first token
 * `ttftMs` after admission (so TTFT seen by a client = queue wait + prefill) and one token
 * every `itlMs` after that. Timers are drift-compensated against the admission time, so a
 * late timer emits the overdue tokens at once instead of stretching the whole stream.
 */
export class Engine {
  readonly running = new Set<Seq>();
  private queue: Seq[] = [];
  private queueHead = 0;
  private waitingCount = 0;
  private readonly now: () => number;

  promptTokensTotal = 0;
  /** vLLM's prefix-cache counters, in tokens. */
  prefixQueries = 0;
  prefixHits = 0;
  readonly cache: PrefixCache | null;
  /** When the prefill lane is free again (ms, `now()` clock). */
  private prefillFreeAt = 0;
  generationTokensTotal = 0;
  readonly success = { stop: 0, length: 0, abort: 0 };
  readonly ttft = new Histogram(
    "vllm:time_to_first_token_seconds",
    "Histogram of time to first token in seconds.",
    TTFT_BUCKETS,
  );
  readonly itl = new Histogram(
    "vllm:inter_token_latency_seconds",
    "Histogram of inter-token latency in seconds.",
    ITL_BUCKETS,
  );
  readonly e2e = new Histogram(
    "vllm:e2e_request_latency_seconds",
    "Histogram of e2e request latency in seconds.",
    REQUEST_LATENCY_BUCKETS,
  );
  readonly queueTime = new Histogram(
    "vllm:request_queue_time_seconds",
    "Histogram of time spent in WAITING phase for request.",
    REQUEST_LATENCY_BUCKETS,
  );
  readonly promptHist: Histogram;
  readonly generationHist: Histogram;
  /** Tokens since the last periodic stats log line, like vLLM's LoggingStatLogger. */
  interval = { prompt: 0, generation: 0 };

  constructor(readonly options: EngineOptions) {
    this.now = options.now ?? (() => performance.now());
    this.cache =
      options.prefixCaching === false
        ? null
        : new PrefixCache(Math.ceil(options.kvCacheTokens / BLOCK_TOKENS));
    const buckets = tokenBuckets(options.maxModelLen);
    this.promptHist = new Histogram(
      "vllm:request_prompt_tokens",
      "Number of prefill tokens processed.",
      buckets,
    );
    this.generationHist = new Histogram(
      "vllm:request_generation_tokens",
      "Number of generation tokens processed.",
      buckets,
    );
  }

  get waiting(): number {
    return this.waitingCount;
  }

  /** Queues or starts `seq`. With latency off, a sequence may finish before this returns. */
  submit(seq: Seq): void {
    seq.arrivedAt = this.now();
    if (this.running.size < this.options.maxNumSeqs) {
      this.start(seq);
      return;
    }
    seq.state = "waiting";
    this.queue.push(seq);
    this.waitingCount++;
  }

  /** Client went away: frees the slot at once and counts the request as `abort`. */
  abort(seq: Seq): void {
    if (seq.state === "finished" || seq.state === "aborted") return;
    const wasRunning = seq.state === "running";
    seq.state = "aborted";
    if (seq.timer) clearTimeout(seq.timer);
    seq.timer = null;
    this.success.abort++;
    if (wasRunning) {
      this.running.delete(seq);
      this.generationTokensTotal += seq.emitted;
      this.interval.generation += seq.emitted;
      this.admitNext();
    } else {
      this.waitingCount--;
    }
  }

  kvCacheUsage(): number {
    let used = 0;
    for (const seq of this.running) used += seq.promptTokens + seq.emitted;
    return Math.min(1, used / this.options.kvCacheTokens);
  }

  private start(seq: Seq): void {
    const now = this.now();
    seq.state = "running";
    seq.admittedAt = now;
    this.running.add(seq);
    this.promptTokensTotal += seq.promptTokens;
    this.interval.prompt += seq.promptTokens;
    this.queueTime.observe((now - seq.arrivedAt) / 1000);
    seq.prefillMs = this.prefill(seq, now);
    const ttftMs = seq.prefillMs;
    const { itlMs } = this.options;
    if (ttftMs === 0 && itlMs === 0) {
      if (seq.stream) {
        this.ttft.observe((now - seq.arrivedAt) / 1000);
        seq.emitted = seq.output.length;
        seq.listener.tokens?.(0, seq.output.length);
      }
      this.finish(seq);
      return;
    }
    if (!seq.stream) {
      // Only the end matters to a non-streaming client: one timer, not one per token.
      const total = ttftMs + itlMs * Math.max(0, seq.output.length - 1);
      seq.timer = setTimeout(() => this.finish(seq), total);
      return;
    }
    seq.timer = setTimeout(() => this.step(seq), ttftMs);
  }

  /** Looks the prompt up in the prefix cache, caches it, and returns admission → first token. */
  private prefill(seq: Seq, now: number): number {
    let uncached = seq.promptTokens;
    if (this.cache && seq.prefixBlocks.length > 0) {
      const matched = this.cache.lookup(seq.prefixBlocks);
      // As vLLM: a full hit still computes the last token (it needs its logits).
      seq.cachedTokens = Math.max(0, Math.min(matched * BLOCK_TOKENS, seq.promptTokens - 1));
      this.cache.insert(seq.prefixBlocks);
      uncached -= seq.cachedTokens;
    }
    if (this.cache) {
      this.prefixQueries += seq.promptTokens;
      this.prefixHits += seq.cachedTokens;
    }
    const rate = this.options.prefillTokensPerS ?? 0;
    if (rate <= 0) return this.options.ttftMs;
    const end = Math.max(now, this.prefillFreeAt) + (uncached * 1000) / rate;
    this.prefillFreeAt = end;
    return this.options.ttftMs + (end - now);
  }

  private step(seq: Seq): void {
    seq.timer = null;
    if (seq.state !== "running") return;
    const ttftMs = seq.prefillMs;
    const { itlMs } = this.options;
    const elapsed = this.now() - seq.admittedAt;
    const total = seq.output.length;
    const due = itlMs === 0 ? total : Math.min(total, 1 + Math.floor((elapsed - ttftMs) / itlMs));
    const from = seq.emitted;
    if (from === 0) this.ttft.observe((this.now() - seq.arrivedAt) / 1000);
    else this.itl.observe(itlMs / 1000, due - from);
    seq.emitted = Math.max(due, from + 1);
    seq.listener.tokens?.(from, seq.emitted);
    if (seq.state !== "running") return;
    if (seq.emitted >= total) {
      this.finish(seq);
      return;
    }
    const nextAt = seq.admittedAt + ttftMs + seq.emitted * itlMs;
    seq.timer = setTimeout(() => this.step(seq), Math.max(0, nextAt - this.now()));
  }

  private finish(seq: Seq): void {
    if (seq.state !== "running") return;
    seq.timer = null;
    const now = this.now();
    const outputTokens = seq.output.length;
    if (!seq.stream && (seq.prefillMs > 0 || this.options.itlMs > 0)) {
      this.ttft.observe((seq.admittedAt - seq.arrivedAt + seq.prefillMs) / 1000);
      this.itl.observe(this.options.itlMs / 1000, outputTokens - 1);
    } else if (!seq.stream) {
      this.ttft.observe((now - seq.arrivedAt) / 1000);
    }
    seq.emitted = outputTokens;
    seq.state = "finished";
    this.running.delete(seq);
    this.generationTokensTotal += outputTokens;
    this.interval.generation += outputTokens;
    this.success[seq.finishReason]++;
    this.e2e.observe((now - seq.arrivedAt) / 1000);
    this.promptHist.observe(seq.promptTokens);
    this.generationHist.observe(outputTokens);
    if (this.cache && seq.finalBlocks) this.cache.insert(seq.finalBlocks());
    seq.listener.done(seq.finishReason);
    this.admitNext();
  }

  private admitNext(): void {
    while (this.running.size < this.options.maxNumSeqs && this.waitingCount > 0) {
      const next = this.queue[this.queueHead];
      this.queue[this.queueHead] = undefined as unknown as Seq;
      this.queueHead++;
      if (next?.state !== "waiting") continue;
      this.waitingCount--;
      this.start(next);
    }
    if (this.queueHead > 1024 && this.queueHead * 2 > this.queue.length) {
      this.queue = this.queue.slice(this.queueHead);
      this.queueHead = 0;
    }
  }

  /** Prometheus text with vLLM's metric names and labels. */
  renderMetrics(extra: { cacheConfig: Record<string, string> }): string {
    const labels = `engine="0",model_name="${escapeLabel(this.options.modelName)}"`;
    const sample = (name: string, value: number, more = "") =>
      `${name}{${more}${labels}} ${num(value)}`;
    const cacheLabels = Object.entries(extra.cacheConfig)
      .map(([key, value]) => `${key}="${escapeLabel(value)}",`)
      .join("");
    const parts = [
      gauge(
        "vllm:num_requests_running",
        "Number of requests in model execution batches.",
        "gauge",
        [sample("vllm:num_requests_running", this.running.size)],
      ),
      gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", "gauge", [
        sample("vllm:num_requests_waiting", this.waitingCount),
      ]),
      gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", "gauge", [
        sample("vllm:kv_cache_usage_perc", this.kvCacheUsage()),
      ]),
      gauge(
        "vllm:prefix_cache_queries_total",
        "Prefix cache queries, in terms of number of queried tokens.",
        "counter",
        [sample("vllm:prefix_cache_queries_total", this.prefixQueries)],
      ),
      gauge(
        "vllm:prefix_cache_hits_total",
        "Prefix cache hits, in terms of number of cached tokens.",
        "counter",
        [sample("vllm:prefix_cache_hits_total", this.prefixHits)],
      ),
      gauge(
        "vllm:num_preemptions_total",
        "Cumulative number of preemption from the engine.",
        "counter",
        [sample("vllm:num_preemptions_total", 0)],
      ),
      gauge("vllm:prompt_tokens_total", "Number of prefill tokens processed.", "counter", [
        sample("vllm:prompt_tokens_total", this.promptTokensTotal),
      ]),
      gauge("vllm:generation_tokens_total", "Number of generation tokens processed.", "counter", [
        sample("vllm:generation_tokens_total", this.generationTokensTotal),
      ]),
      gauge(
        "vllm:request_success_total",
        "Count of successfully processed requests.",
        "counter",
        (["stop", "length", "abort"] as const).map((reason) =>
          sample(
            "vllm:request_success_total",
            this.success[reason],
            `finished_reason="${reason}",`,
          ),
        ),
      ),
      this.ttft.render(labels),
      this.itl.render(labels),
      this.e2e.render(labels),
      this.queueTime.render(labels),
      this.promptHist.render(labels),
      this.generationHist.render(labels),
      gauge("vllm:cache_config_info", "Information of the LLMEngine CacheConfig", "gauge", [
        `vllm:cache_config_info{${cacheLabels}engine="0"} 1.0`,
      ]),
    ];
    return `${parts.join("\n")}\n`;
  }
}

function escapeLabel(value: string): string {
  return value.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");
}
