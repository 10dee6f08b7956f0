import { describe, expect, test } from "bun:test";
import { LineBuffer } from "../../agent/lib/log-buffer.ts";
import { classifyLine, displayLine, LaunchProgress } from "../../agent/lib/progress.ts";
import type { LaunchPhase } from "../../protocol/index.ts";

/**
 * vLLM's startup lines as real versions print them (shared/research/vllm-contract.md,
 * "Startup log lines", and the issues it cites), with the prefixes of each era.
 */
const realLines: [string, LaunchPhase | null, { percent?: number; kv?: number }?][] = [
  // v0.6-era (V0 engine): `INFO mm-dd hh:mm:ss file.py:line]`, no process prefix.
  ["INFO 08-06 10:22:14 model_runner.py:1025] Starting to load model /models/llama-3-8b...", null],
  [
    "Loading safetensors checkpoint shards:  40% Completed | 2/5 [00:00<00:00,  4.45it/s]",
    "loading_weights",
    { percent: 40 },
  ],
  [
    "INFO 08-06 10:22:31 model_runner.py:1056] Loading model weights took 14.9888 GB",
    "loading_weights",
  ],
  ["INFO 08-06 10:22:33 gpu_executor.py:122] # GPU blocks: 27896, # CPU blocks: 2048", "profiling"],
  [
    "INFO 08-06 10:22:36 model_runner.py:1341] Capturing the model for CUDA graphs. This may lead to unexpected consequences if the model is not static.",
    "capturing_graphs",
  ],
  [
    "INFO 08-06 10:22:52 model_runner.py:1456] Graph capturing finished in 16 secs.",
    "capturing_graphs",
  ],
  [
    "INFO 08-06 10:22:53 api_server.py:292] Starting vLLM API server on http://0.0.0.0:8000",
    "api_server",
  ],
  // v0.8-0.9 (V1 engine, one process prefix, CUDA graph shapes bar).
  [
    "INFO 05-02 09:10:11 [gpu_model_runner.py:1329] Model loading took 15.2 GiB and 3.118 seconds",
    "loading_weights",
  ],
  [
    "INFO 05-02 09:10:19 [backends.py:430] Using cache directory: /root/.cache/vllm/torch_compile_cache/1a2b3c/rank_0_0 for vLLM's torch.compile",
    "compiling",
  ],
  ["INFO 05-02 09:10:19 [backends.py:440] Dynamo bytecode transform time: 7.51 s", "compiling"],
  [
    "INFO 05-02 09:10:24 [backends.py:136] Directly load the compiled graph(s) for shape None from the cache, took 4.312 s",
    "compiling",
  ],
  ["INFO 05-02 09:10:27 [monitor.py:33] torch.compile takes 11.82 s in total", "compiling"],
  [
    "INFO 05-02 09:10:29 [kv_cache_utils.py:634] GPU KV cache size: 613,024 tokens",
    "profiling",
    { kv: 613_024 },
  ],
  [
    "INFO 05-02 09:10:29 [kv_cache_utils.py:637] Maximum concurrency for 131,072 tokens per request: 4.68x",
    "profiling",
  ],
  [
    "Capturing CUDA graph shapes:  40%|████      | 27/67 [00:04<00:06,  6.02it/s]",
    "capturing_graphs",
    { percent: 40 },
  ],
  [
    "INFO 05-02 09:10:52 [core.py:159] init engine (profile, create kv cache, warmup model) took 33.64 seconds",
    "api_server",
  ],
  // v0.10-0.11: `(EngineCore_DP0 pid=N)` / `(APIServer pid=N)` prefixes, two graph bars.
  [
    "(EngineCore_DP0 pid=2242) INFO 10-14 03:12:55 [gpu_model_runner.py:2338] Starting to load model Qwen/Qwen3-8B...",
    null,
  ],
  [
    "(EngineCore_DP0 pid=2242) INFO 10-14 03:12:56 [default_loader.py:267] Loading weights took 2.15 seconds",
    "loading_weights",
  ],
  [
    "(EngineCore_DP0 pid=2242) INFO 10-14 03:13:09 [gpu_worker.py:298] Available KV cache memory: 56.15 GiB",
    "profiling",
  ],
  [
    "(EngineCore_DP0 pid=2242) Capturing CUDA graphs (mixed prefill-decode, PIECEWISE): 100%|██████████| 11/11 [00:01<00:00,  7.12it/s]",
    "capturing_graphs",
    { percent: 100 },
  ],
  [
    "Capturing CUDA graphs (decode, FULL):  57%|█████▋    | 4/7 [00:00<00:00,  8.80it/s]",
    "capturing_graphs",
    { percent: 57 },
  ],
  [
    "(EngineCore_DP0 pid=2242) INFO 10-14 03:13:20 [core.py:210] init engine (profile, create kv cache, warmup model) took 212.68 s (compilation: 13.01 s)",
    "api_server",
  ],
  [
    "(APIServer pid=2101) INFO 10-14 03:13:21 [api_server.py:1912] Starting vLLM API server 0 on http://0.0.0.0:8000",
    "api_server",
  ],
  ["(APIServer pid=2101) INFO 10-14 03:13:21 [launcher.py:29] Available routes are:", "api_server"],
  ["Starting vLLM server on http://127.0.0.1:8101", "api_server"],
  ["INFO:     Application startup complete.", "ready"],
  ["(APIServer pid=2101) INFO:     Application startup complete.", "ready"],
  // Lines that say nothing about the phase.
  ["INFO 10-14 03:12:50 [__init__.py:216] Automatically detected platform cuda.", null],
  [
    "(APIServer pid=2101) INFO 10-14 03:13:40 [loggers.py:123] Engine 000: Avg prompt throughput: 0.0 tokens/s",
    null,
  ],
];

describe("launch progress: vLLM's startup lines", () => {
  for (const [line, phase, extra] of realLines) {
    test(`${phase ?? "no phase"}: ${line.slice(0, 80)}`, () => {
      const signal = classifyLine(displayLine(line));
      expect(signal?.phase ?? null).toBe(phase);
      if (extra?.percent !== undefined) expect(signal?.percent).toBe(extra.percent);
      if (extra?.kv !== undefined) expect(signal?.kvCacheTokens).toBe(extra.kv);
    });
  }

  test("the prefixes of every era come off for display", () => {
    expect(
      displayLine(
        "(EngineCore_DP0 pid=2242) INFO 10-14 03:12:56 [default_loader.py:267] Loading weights took 2.15 seconds",
      ),
    ).toBe("Loading weights took 2.15 seconds");
    expect(
      displayLine("INFO 08-06 10:22:14 model_runner.py:1025] Starting to load model x..."),
    ).toBe("Starting to load model x...");
    expect(displayLine("INFO:     Application startup complete.")).toBe(
      "Application startup complete.",
    );
  });
});

describe("launch progress: one launch", () => {
  test("phases move forward only, with their durations, percentages and the KV cache size", () => {
    let now = 0;
    const phases: LaunchPhase[] = [];
    const progress = new LaunchProgress({ now: () => now, onPhase: (p) => phases.push(p) });
    const at = (seconds: number, line: string) => {
      now = seconds * 1000;
      progress.line(line);
    };
    at(
      1,
      "(EngineCore_DP0 pid=7) INFO 10-14 03:12:55 [gpu_model_runner.py:2338] Starting to load model m...",
    );
    expect(progress.snapshot().phase).toBe("starting");
    // vLLM reports the download when it is over: the phase began that long before.
    at(
      41,
      "(EngineCore_DP0 pid=7) INFO 10-14 03:13:35 [weight_utils.py:413] Time spent downloading weights for m: 38.5 seconds",
    );
    at(42, "Loading safetensors checkpoint shards:   0% Completed | 0/4 [00:00<?, ?it/s]");
    at(44, "Loading safetensors checkpoint shards:  50% Completed | 2/4 [00:02<00:02,  1.0it/s]");
    const half = progress.snapshot();
    expect(half).toMatchObject({ phase: "loading_weights", percent: 50, detail: "2/4 shards" });
    // Two seconds for the first half: two more for the rest.
    expect(half.eta_s).toBe(2);
    expect(half.eta_basis).toBe("phase");
    at(46, "Loading safetensors checkpoint shards: 100% Completed | 4/4 [00:04<00:00,  1.0it/s]");
    at(50, "INFO 10-14 03:13:44 [monitor.py:34] torch.compile takes 3.0 s in total");
    at(52, "INFO 10-14 03:13:46 [kv_cache_utils.py:1087] GPU KV cache size: 65,536 tokens");
    // A compile line during graph capture does not send the phase back.
    at(
      53,
      "Capturing CUDA graphs (mixed prefill-decode, PIECEWISE):  45%|████▌     | 5/11 [00:01<00:01]",
    );
    at(
      54,
      "INFO 10-14 03:13:48 [backends.py:215] Compiling a graph for dynamic shape takes 0.52 s",
    );
    const graphs = progress.snapshot();
    expect(graphs).toMatchObject({
      phase: "capturing_graphs",
      percent: 45,
      kv_cache_tokens: 65_536,
      last_line: "Compiling a graph for dynamic shape takes 0.52 s",
    });
    at(
      56,
      "(APIServer pid=6) INFO 10-14 03:13:50 [api_server.py:1912] Starting vLLM server on http://127.0.0.1:8101",
    );
    at(57, "INFO:     Application startup complete.");
    now = 90_000;
    const done = progress.snapshot();
    expect(done).toMatchObject({ phase: "ready", percent: 100, eta_s: 0, elapsed_s: 57 });
    expect(phases).toEqual([
      "downloading",
      "loading_weights",
      "compiling",
      "profiling",
      "capturing_graphs",
      "api_server",
      "ready",
    ]);
    expect(done.phases).toEqual([
      { phase: "starting", duration_s: 2.5 },
      { phase: "downloading", duration_s: 39.5 },
      { phase: "loading_weights", duration_s: 5 },
      { phase: "compiling", duration_s: 5 },
      { phase: "profiling", duration_s: 1 },
      { phase: "capturing_graphs", duration_s: 3 },
      { phase: "api_server", duration_s: 1 },
    ]);
  });

  test("a restart begins a new launch", () => {
    let now = 0;
    const progress = new LaunchProgress({ now: () => now });
    progress.line("Loading safetensors checkpoint shards:  50% Completed | 2/4");
    now = 5000;
    progress.begin();
    const fresh = progress.snapshot();
    expect(fresh).toMatchObject({ phase: "starting", percent: null, elapsed_s: 0, phases: [] });
  });
});

describe("engine log buffer", () => {
  test("tqdm redraws separated by a carriage return are lines of their own", async () => {
    const buffer = new LineBuffer();
    const seen: string[] = [];
    const chunks = [
      "INFO start\n(EngineCore_DP0 pid=1) \rLoading: 0% Completed | 0/2\rLoading: 50% Com",
      "pleted | 1/2\r",
      "Loading: 100% Completed | 2/2\r",
      "\nINFO done\r\n",
    ];
    const stream = new ReadableStream<Uint8Array>({
      start(controller) {
        for (const chunk of chunks) controller.enqueue(new TextEncoder().encode(chunk));
        controller.close();
      },
    });
    await buffer.pump(stream, (line) => seen.push(line));
    expect(seen).toEqual([
      "INFO start",
      "(EngineCore_DP0 pid=1) ",
      "Loading: 0% Completed | 0/2",
      "Loading: 50% Completed | 1/2",
      "Loading: 100% Completed | 2/2",
      "INFO done",
    ]);
  });

  test("since(after, limit) reads on from a line number, says what it skipped", () => {
    const buffer = new LineBuffer({ maxLines: 5 });
    for (let i = 0; i < 8; i++) buffer.push(`line ${i}`);
    // Lines 0-2 rotated out; 3-7 are held.
    expect(buffer.since(6, 100)).toEqual({ lines: ["line 6", "line 7"], next: 8, skipped: 0 });
    expect(buffer.since(1, 100)).toEqual({
      lines: ["line 3", "line 4", "line 5", "line 6", "line 7"],
      next: 8,
      skipped: 2,
    });
    expect(buffer.since(0, 2)).toEqual({ lines: ["line 6", "line 7"], next: 8, skipped: 6 });
    expect(buffer.since(8, 100)).toEqual({ lines: [], next: 8, skipped: 0 });
    // A number past the end (another engine's log) reads nothing and says where to go on.
    expect(buffer.since(50, 100)).toEqual({ lines: [], next: 8, skipped: 0 });
  });
});
