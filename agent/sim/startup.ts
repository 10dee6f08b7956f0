/**
 * The simulated model load: vLLM's startup lines, in vLLM's order and on vLLM's streams,
 * paced by a startup profile (a total time and each phase's share of it). vLLM's own logger
 * writes to stdout; tqdm bars (weight shards, CUDA graphs) and uvicorn write to stderr, the
 * bars redrawn with `\r` as tqdm does on a pipe. Lines of the engine core carry its
 * `(EngineCore_DP0 pid=N)` prefix, as vLLM ≥ 0.10 prints them.
 */
import type { SimConfig } from "./config.ts";

/** The phases a profile shares its time between (the protocol's launch phases before ready). */
export const startupPhaseNames = [
  "starting",
  "downloading",
  "loading_weights",
  "compiling",
  "profiling",
  "capturing_graphs",
  "api_server",
] as const;
export type StartupPhaseName = (typeof startupPhaseNames)[number];
export type StartupShares = Record<StartupPhaseName, number>;

/**
 * Default shares, after the measured launches in shared/research/vllm-contract.md: graphs and
 * compilation take most of a warm start; no download (weights already on the host).
 */
export const defaultStartupShares: StartupShares = {
  starting: 5,
  downloading: 0,
  loading_weights: 25,
  compiling: 25,
  profiling: 10,
  capturing_graphs: 30,
  api_server: 5,
};

/**
 * `loading_weights=40,compiling=0,...`: the named phases take these shares (relative weights,
 * normalised over the sum), the others keep their defaults.
 */
export function parseStartupShares(text: string): StartupShares {
  const shares = { ...defaultStartupShares };
  for (const part of text.split(",")) {
    const item = part.trim();
    if (item === "") continue;
    const [name, value] = item.split("=").map((s) => s.trim());
    if (!startupPhaseNames.includes(name as StartupPhaseName)) {
      throw new Error(
        `--startup-phases: unknown phase ${name}; phases: ${startupPhaseNames.join(", ")}`,
      );
    }
    const share = Number(value);
    if (value === undefined || value === "" || !Number.isFinite(share) || share < 0) {
      throw new Error(`--startup-phases: ${name} needs a share >= 0, e.g. ${name}=20`);
    }
    shares[name as StartupPhaseName] = share;
  }
  if (Object.values(shares).every((share) => share === 0)) {
    throw new Error("--startup-phases: at least one phase needs a share above 0");
  }
  return shares;
}

/** Milliseconds per phase: `totalMs` split by the shares (phases vLLM skips get none). */
export function phaseDurations(
  totalMs: number,
  shares: StartupShares,
  skip: ReadonlySet<StartupPhaseName> = new Set(),
): Record<StartupPhaseName, number> {
  const used = startupPhaseNames.filter((name) => !skip.has(name));
  const sum = used.reduce((acc, name) => acc + shares[name], 0);
  const out = Object.fromEntries(startupPhaseNames.map((name) => [name, 0])) as Record<
    StartupPhaseName,
    number
  >;
  if (sum === 0) return out;
  for (const name of used) out[name] = (totalMs * shares[name]) / sum;
  return out;
}

export type StartupOutput = {
  stdout: (text: string) => void;
  stderr: (text: string) => void;
  sleep: (ms: number) => Promise<void>;
};

const pad = (n: number) => String(n).padStart(2, "0");
function stamp(): string {
  const d = new Date();
  return `${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}
function clock(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  return `${pad(Math.floor(s / 60))}:${pad(s % 60)}`;
}

/**
 * Prints the startup lines, pacing them by the profile; resolves true when the API server is
 * about to listen (the caller then listens and prints `Starting vLLM server on …` and
 * uvicorn's lines), false where a real vLLM that runs out of memory fails: in profiling.
 */
export async function simulateStartup(config: SimConfig, out: StartupOutput): Promise<boolean> {
  const pid = process.pid;
  const core = (where: string, text: string) =>
    out.stdout(`(EngineCore_DP0 pid=${pid}) INFO ${stamp()} [${where}] ${text}\n`);
  const api = (where: string, text: string) =>
    out.stdout(`(APIServer pid=${pid}) INFO ${stamp()} [${where}] ${text}\n`);
  const skip = new Set<StartupPhaseName>(
    config.enforceEager ? ["compiling", "capturing_graphs"] : [],
  );
  const ms = phaseDurations(config.startupDelayMs, config.startupShares, skip);
  const s = (name: StartupPhaseName) => (ms[name] / 1000).toFixed(2);
  /** A tqdm bar: drawn at 0, redrawn per step with `\r`, closed with a newline. */
  const bar = async (desc: string, total: number, durationMs: number, style: "vllm" | "tqdm") => {
    const draw = (n: number) => {
      const pct = Math.round((100 * n) / total);
      const elapsed = (durationMs * n) / total / 1000;
      const left = (durationMs * (total - n)) / total / 1000;
      const rate = n === 0 ? "?it/s" : `${(n / Math.max(elapsed, 0.001)).toFixed(2)}it/s`;
      const filled = Math.round(pct / 10);
      const body =
        style === "vllm"
          ? `${String(pct).padStart(3)}% Completed | ${n}/${total}`
          : `${String(pct).padStart(3)}%|${"█".repeat(filled)}${" ".repeat(10 - filled)}| ${n}/${total}`;
      return `\r${desc}: ${body} [${clock(elapsed)}<${n === 0 ? "?" : clock(left)}, ${rate}]`;
    };
    // vLLM prefixes what its engine process writes at the start of each line only, so the
    // redraws after the first `\r` carry no prefix.
    out.stderr(`(EngineCore_DP0 pid=${pid}) ${draw(0)}`);
    for (let n = 1; n <= total; n++) {
      await out.sleep(durationMs / total);
      out.stderr(draw(n));
    }
    out.stderr("\n");
  };

  // starting: the engine process comes up and builds the model (no weights yet).
  core(
    "core.py:77",
    `Initializing a V1 LLM engine (v${config.version}) with config: model='${config.model}', served_model_name=${config.servedModelNames[0]}, max_seq_len=${config.maxModelLen}, tensor_parallel_size=${config.tensorParallelSize}, enforce_eager=${config.enforceEager}`,
  );
  await out.sleep(ms.starting / 2);
  core("gpu_model_runner.py:2338", `Starting to load model ${config.model}...`);
  await out.sleep(ms.starting / 2);

  if (ms.downloading > 0) {
    core("weight_utils.py:392", "Using model weights format ['*.safetensors']");
    await bar("Fetching 4 files", 4, ms.downloading, "tqdm");
    core(
      "weight_utils.py:413",
      `Time spent downloading weights for ${config.model}: ${s("downloading")} seconds`,
    );
  }

  const shards = config.startupShards;
  await bar("Loading safetensors checkpoint shards", shards, ms.loading_weights, "vllm");
  core("default_loader.py:267", `Loading weights took ${s("loading_weights")} seconds`);
  core(
    "gpu_model_runner.py:2392",
    `Model loading took 1.2 GiB and ${s("loading_weights")} seconds`,
  );

  if (!skip.has("compiling")) {
    core(
      "backends.py:539",
      "Using cache directory: /root/.cache/vllm/torch_compile_cache/5f1c2e7d2a/rank_0_0/backbone for vLLM's torch.compile",
    );
    core(
      "backends.py:550",
      `Dynamo bytecode transform time: ${(ms.compiling / 3000).toFixed(2)} s`,
    );
    await out.sleep(ms.compiling / 3);
    await out.sleep(ms.compiling / 3);
    core(
      "backends.py:215",
      `Compiling a graph for dynamic shape takes ${(ms.compiling / 3000).toFixed(2)} s`,
    );
    await out.sleep(ms.compiling / 3);
    core("monitor.py:34", `torch.compile takes ${s("compiling")} s in total`);
  }

  await out.sleep(ms.profiling / 2);
  if (config.failStartup) return false;
  const kvGiB = (config.kvCacheTokens * 128 * 1024) / 2 ** 30;
  core("gpu_worker.py:298", `Available KV cache memory: ${kvGiB.toFixed(2)} GiB`);
  core(
    "kv_cache_utils.py:1087",
    `GPU KV cache size: ${config.kvCacheTokens.toLocaleString("en-US")} tokens`,
  );
  core(
    "kv_cache_utils.py:1091",
    `Maximum concurrency for ${config.maxModelLen.toLocaleString("en-US")} tokens per request: ${(config.kvCacheTokens / config.maxModelLen).toFixed(2)}x`,
  );
  await out.sleep(ms.profiling / 2);

  if (!skip.has("capturing_graphs")) {
    const half = ms.capturing_graphs / 2;
    await bar("Capturing CUDA graphs (mixed prefill-decode, PIECEWISE)", 11, half, "tqdm");
    await bar("Capturing CUDA graphs (decode, FULL)", 7, half, "tqdm");
    core(
      "gpu_model_runner.py:3118",
      `Graph capturing finished in ${Math.round(ms.capturing_graphs / 1000)} secs, took 0.45 GiB`,
    );
  }
  const total = (config.startupDelayMs - ms.api_server) / 1000;
  core(
    "core.py:210",
    `init engine (profile, create kv cache, warmup model) took ${total.toFixed(2)} seconds`,
  );
  await out.sleep(ms.api_server / 2);
  api("api_server.py:1692", "Supported_tasks: ['generate']");
  await out.sleep(ms.api_server / 2);
  return true;
}
