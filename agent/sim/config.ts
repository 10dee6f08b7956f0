import { z } from "zod";
import type { SimEnv } from "./env.ts";
import { parseStartupShares, type StartupShares } from "./startup.ts";

export type SimMode = "echo" | "random";

/** Everything the simulated engine needs, resolved from argv, env and defaults. */
export type SimConfig = {
  model: string;
  /** The first name echoes as `model` in responses and labels the metrics. */
  servedModelNames: string[];
  host: string;
  port: number;
  maxModelLen: number;
  maxNumSeqs: number;
  apiKeys: string[];
  gpuMemoryUtilization: number;
  tensorParallelSize: number;
  dtype: string;
  /** The whole simulated load, split between the phases by `startupShares`. */
  startupDelayMs: number;
  startupShares: StartupShares;
  /** How many checkpoint shards the load bar counts. */
  startupShards: number;
  /** `--enforce-eager`: vLLM skips torch.compile and CUDA graphs, and so does the log. */
  enforceEager: boolean;
  ttftMs: number;
  itlMs: number;
  failureRate: number;
  mode: SimMode;
  exitAfterMs: number | null;
  exitCode: number;
  failStartup: boolean;
  embeddingDim: number;
  kvCacheTokens: number;
  /** `--prefill-rate`: prompt tokens per second of prefill; 0 = TTFT is `ttftMs` alone. */
  prefillTokensPerS: number;
  /** vLLM's automatic prefix caching; `--no-enable-prefix-caching` turns it off. */
  prefixCaching: boolean;
  /** SIM_LOAD_HEADER: `/proxy` answers carry `x-fleet-load` as an agent's would. */
  loadHeader: boolean;
  accessLog: boolean;
  version: string;
  /** `prompt_tokens` to report in turn instead of the real count (null: the real one). */
  reportedPromptTokens: unknown[];
  /** Flags vLLM has that the simulator accepts and ignores (warned about at startup). */
  ignored: string[];
};

export const defaults = {
  host: "0.0.0.0",
  port: 8000,
  maxModelLen: 4096,
  maxNumSeqs: 256,
  ttftMs: 20,
  itlMs: 10,
  startupDelayMs: 0,
  startupShards: 4,
  embeddingDim: 32,
  kvCacheTokens: 65_536,
  version: "0.11.0",
  exitCode: 1,
} as const;

/** vLLM flags that take no value (so the next argv item is not swallowed). */
const booleanFlags = new Set([
  "--trust-remote-code",
  "--enforce-eager",
  "--enable-prefix-caching",
  "--enable-chunked-prefill",
  "--disable-log-stats",
  "--disable-log-requests",
  "--enable-log-requests",
  "--enable-server-load-tracking",
  "--enable-force-include-usage",
  "--enable-auto-tool-choice",
  "--enable-lora",
  "--disable-custom-all-reduce",
  "--disable-frontend-multiprocessing",
  "--skip-tokenizer-init",
  "--headless",
  "--fail-startup",
]);

/** Flags the simulator understands; everything else is accepted and ignored. */
const valueFlags = new Set([
  "--model",
  "--host",
  "--port",
  "--served-model-name",
  "--max-model-len",
  "--max-num-seqs",
  "--gpu-memory-utilization",
  "--tensor-parallel-size",
  "-tp",
  "--dtype",
  "--api-key",
  "--startup-delay",
  "--startup-phases",
  "--startup-shards",
  "--time-to-first-token",
  "--inter-token-latency",
  "--failure-rate",
  "--mode",
  "--crash-after",
  "--prefill-rate",
]);
const multiValueFlags = new Set(["--served-model-name", "--api-key"]);
const understoodBooleans = new Set([
  "--trust-remote-code",
  "--enforce-eager",
  "--fail-startup",
  "--enable-prefix-caching",
  "--no-enable-prefix-caching",
]);

export class UsageError extends Error {
  override name = "UsageError";
}

const int = (flag: string, min: number) =>
  z.coerce
    .number({ error: `${flag} must be a number` })
    .int(`${flag} must be an integer`)
    .min(min, `${flag} must be at least ${min}`);

function parseValue<T>(schema: z.ZodType<T>, raw: string): T {
  const result = schema.safeParse(raw);
  if (result.success) return result.data;
  throw new UsageError(result.error.issues[0]?.message ?? `bad value ${raw}`);
}

function startupShares(text: string): StartupShares {
  try {
    return parseStartupShares(text);
  } catch (error) {
    throw new UsageError(error instanceof Error ? error.message : String(error));
  }
}

/** `1.5k`-free plain parsing of `--max-model-len`, which vLLM also accepts as e.g. `8k`. */
function parseLen(raw: string): number {
  const match = /^(\d+(?:\.\d+)?)([kKmM]?)$/.exec(raw);
  if (!match) throw new UsageError(`--max-model-len: invalid value ${raw}`);
  const base = Number(match[1]);
  const unit = match[2];
  const scale =
    unit === "k" ? 1000 : unit === "K" ? 1024 : unit === "m" ? 1e6 : unit === "M" ? 1 << 20 : 1;
  return Math.round(base * scale);
}

/**
 * Parses `vllm serve MODEL [flags]` (also the legacy `--model MODEL` form, without `serve`).
 * Unknown flags are kept in `ignored`: a flag followed by a non-flag word takes it as value.
 */
export function parseServeArgs(argv: string[], env: SimEnv): SimConfig {
  const args = argv[0] === "serve" ? argv.slice(1) : [...argv];
  const values = new Map<string, string[]>();
  const bools = new Set<string>();
  const ignored: string[] = [];
  let model: string | undefined;

  for (let i = 0; i < args.length; i++) {
    const arg = args[i] as string;
    if (!arg.startsWith("-")) {
      if (model === undefined) model = arg;
      else ignored.push(arg);
      continue;
    }
    const eq = arg.indexOf("=");
    const name = eq > 0 ? arg.slice(0, eq) : arg;
    const inline = eq > 0 ? arg.slice(eq + 1) : undefined;
    if (booleanFlags.has(name) || name.startsWith("--no-")) {
      if (understoodBooleans.has(name)) bools.add(name);
      else ignored.push(name);
      continue;
    }
    const taken: string[] = [];
    if (inline !== undefined) taken.push(inline);
    else if (multiValueFlags.has(name)) {
      while (i + 1 < args.length && !(args[i + 1] as string).startsWith("-")) {
        taken.push(args[++i] as string);
      }
    } else if (i + 1 < args.length && !(args[i + 1] as string).startsWith("--")) {
      taken.push(args[++i] as string);
    }
    if (!valueFlags.has(name)) {
      ignored.push(taken.length > 0 ? `${name} ${taken.join(" ")}` : name);
      continue;
    }
    if (taken.length === 0) throw new UsageError(`argument ${name}: expected a value`);
    values.set(name === "-tp" ? "--tensor-parallel-size" : name, taken);
  }

  model = model ?? values.get("--model")?.[0];
  if (!model) throw new UsageError("a model is required: vllm serve MODEL [flags]");
  const one = (flag: string) => values.get(flag)?.[0];
  const pick = <T>(flag: string, schema: z.ZodType<T>): T | undefined => {
    const raw = one(flag);
    return raw === undefined ? undefined : parseValue(schema, raw);
  };

  const modeRaw = one("--mode");
  const maxLenRaw = one("--max-model-len");
  const apiKeys = values.get("--api-key") ?? (env.VLLM_API_KEY ? [env.VLLM_API_KEY] : []);
  const exitAfter = pick("--crash-after", int("--crash-after", 0)) ?? env.SIM_EXIT_AFTER_MS;

  return {
    model,
    servedModelNames: values.get("--served-model-name") ?? [model],
    host: one("--host") ?? defaults.host,
    port: pick("--port", int("--port", 0).max(65_535)) ?? defaults.port,
    maxModelLen: maxLenRaw ? parseLen(maxLenRaw) : defaults.maxModelLen,
    maxNumSeqs:
      pick("--max-num-seqs", int("--max-num-seqs", 1)) ??
      env.SIM_MAX_NUM_SEQS ??
      defaults.maxNumSeqs,
    apiKeys,
    gpuMemoryUtilization:
      pick(
        "--gpu-memory-utilization",
        z.coerce.number().gt(0).max(1, "--gpu-memory-utilization must be in (0, 1]"),
      ) ?? 0.9,
    tensorParallelSize: pick("--tensor-parallel-size", int("--tensor-parallel-size", 1)) ?? 1,
    dtype: one("--dtype") ?? "auto",
    startupDelayMs:
      pick("--startup-delay", int("--startup-delay", 0)) ??
      env.SIM_STARTUP_DELAY_MS ??
      defaults.startupDelayMs,
    startupShares: startupShares(one("--startup-phases") ?? env.SIM_STARTUP_PHASES ?? ""),
    startupShards:
      pick("--startup-shards", int("--startup-shards", 1).max(1000)) ??
      env.SIM_STARTUP_SHARDS ??
      defaults.startupShards,
    enforceEager: bools.has("--enforce-eager"),
    ttftMs:
      pick("--time-to-first-token", int("--time-to-first-token", 0)) ??
      env.SIM_TTFT_MS ??
      defaults.ttftMs,
    itlMs:
      pick("--inter-token-latency", int("--inter-token-latency", 0)) ??
      env.SIM_ITL_MS ??
      defaults.itlMs,
    failureRate:
      pick("--failure-rate", z.coerce.number().min(0).max(100, "--failure-rate is 0-100")) ??
      env.SIM_FAILURE_RATE ??
      0,
    mode:
      (modeRaw === undefined
        ? undefined
        : parseValue(z.enum(["echo", "random"], { error: "--mode is echo or random" }), modeRaw)) ??
      env.SIM_MODE ??
      "echo",
    exitAfterMs: exitAfter ?? null,
    exitCode: env.SIM_EXIT_CODE ?? defaults.exitCode,
    failStartup: bools.has("--fail-startup") || env.SIM_FAIL_STARTUP,
    embeddingDim: env.SIM_EMBEDDING_DIM ?? defaults.embeddingDim,
    kvCacheTokens: env.SIM_KV_CACHE_TOKENS ?? defaults.kvCacheTokens,
    prefillTokensPerS:
      pick("--prefill-rate", z.coerce.number().min(0, "--prefill-rate must be at least 0")) ??
      env.SIM_PREFILL_TOKENS_PER_S ??
      0,
    prefixCaching: !bools.has("--no-enable-prefix-caching"),
    loadHeader: env.SIM_LOAD_HEADER === "1" || env.SIM_LOAD_HEADER === "true",
    accessLog: env.SIM_ACCESS_LOG,
    version: env.SIM_VLLM_VERSION ?? defaults.version,
    reportedPromptTokens: env.SIM_USAGE_PROMPT_TOKENS ?? [],
    ignored,
  };
}
