import { z } from "zod";
import { parseEnv } from "../../kit/env.ts";

const ms = z.coerce.number().int().min(0);
const flag = z
  .enum(["0", "1", "true", "false", ""])
  .optional()
  .transform((value) => value === "1" || value === "true");

/**
 * Simulator settings from the environment. The agent launches the engine with vLLM's argv
 * only, so everything the simulator adds on top of vLLM can also come from here; a CLI flag
 * wins over its variable.
 */
export const simEnvSchema = z.object({
  SIM_STARTUP_DELAY_MS: ms.optional(),
  /** `--startup-phases`: each phase's share of the startup delay, e.g. `compiling=0,capturing_graphs=50`. */
  SIM_STARTUP_PHASES: z.string().optional(),
  SIM_STARTUP_SHARDS: z.coerce.number().int().min(1).max(1000).optional(),
  SIM_TTFT_MS: ms.optional(),
  SIM_ITL_MS: ms.optional(),
  SIM_FAILURE_RATE: z.coerce.number().min(0).max(100).optional(),
  SIM_MODE: z.enum(["echo", "random"]).optional(),
  SIM_MAX_NUM_SEQS: z.coerce.number().int().min(1).optional(),
  SIM_EXIT_AFTER_MS: ms.optional(),
  SIM_EXIT_CODE: z.coerce.number().int().min(1).max(255).optional(),
  SIM_FAIL_STARTUP: flag,
  SIM_EMBEDDING_DIM: z.coerce.number().int().min(1).max(8192).optional(),
  SIM_KV_CACHE_TOKENS: z.coerce.number().int().min(1).optional(),
  /** `--prefill-rate`: prompt tokens per second of prefill (0: off). */
  SIM_PREFILL_TOKENS_PER_S: z.coerce.number().min(0).optional(),
  SIM_ACCESS_LOG: flag,
  /** `/proxy/{name}/v1/*` answers carry `x-fleet-load` (live running, waiting, KV usage). */
  SIM_LOAD_HEADER: z.enum(["0", "1", "true", "false", ""]).optional(),
  SIM_VLLM_VERSION: z.string().min(1).optional(),
  /**
   * Failure injection for usage accounting: a JSON array of `prompt_tokens` values reported
   * in turn, one per chat or completions answer (`null`: the real count), e.g.
   * `[null, 3000000000, null, -5, null, 1.5, null, "12"]`: a hostile or buggy engine.
   */
  SIM_USAGE_PROMPT_TOKENS: z
    .string()
    .transform((value, ctx): unknown[] | undefined => {
      if (value.trim() === "") return undefined;
      try {
        const parsed: unknown = JSON.parse(value);
        if (Array.isArray(parsed) && parsed.length > 0) return parsed;
      } catch {}
      ctx.addIssue({ code: "custom", message: "must be a non-empty JSON array" });
      return z.NEVER;
    })
    .optional(),
  /** vLLM reads its API key from here when `--api-key` is absent. */
  VLLM_API_KEY: z.string().min(1).optional(),
});
export type SimEnv = z.infer<typeof simEnvSchema>;

export function readSimEnv(source: Record<string, string | undefined>): SimEnv {
  return parseEnv(simEnvSchema, source);
}

/** nvidia-smi simulator settings. */
export const smiEnvSchema = z.object({
  /** `COUNTx NAME:MIB` groups separated by `;`, e.g. `2x NVIDIA H100 80GB HBM3:81559`. */
  SIM_GPUS: z.string().optional(),
  /** Per-index used memory, e.g. `0:1024,1:70000`. */
  SIM_GPU_USED_MIB: z.string().optional(),
  /** Per-index utilization percent, e.g. `1:87`. */
  SIM_GPU_UTIL_PCT: z.string().optional(),
  /** Makes UUIDs differ between simulated hosts (default: same UUIDs everywhere). */
  SIM_GPU_UUID_SEED: z.string().optional(),
  SIM_NVIDIA_SMI_NO_DEVICES: flag,
});
export type SmiEnv = z.infer<typeof smiEnvSchema>;

export function readSmiEnv(source: Record<string, string | undefined>): SmiEnv {
  return parseEnv(smiEnvSchema, source);
}
