import { z } from "zod";
import {
  aliasSchema,
  dtypeSchema,
  gpuIdsSchema,
  isoTimeSchema,
  maxContextTokens,
  portSchema,
} from "./common.ts";
import { engineLoadSchema } from "./load.ts";

/**
 * Flags the agent sets itself. `extra_args` may not carry them: the engine must stay on
 * loopback behind the agent's authenticated proxy, on the port the agent leased.
 */
export const reservedEngineFlags = ["--host", "--port", "--served-model-name"] as const;

/** The operating system refuses an argument with a NUL character in it. */
const hasNoNul = (text: string) => !text.includes("\0");
const nulMessage = "must not contain NUL characters (U+0000)";

/** The model a `vllm serve` command line names: the hub id or a local path. */
export const modelNameSchema = z.string().min(1).max(512).refine(hasNoNul, nulMessage);

/** One extra `vllm serve` argument, passed through verbatim (no shell is ever involved). */
export const extraArgSchema = z
  .string()
  .max(4096)
  .refine(hasNoNul, nulMessage)
  .refine(
    (arg) => !reservedEngineFlags.some((flag) => arg === flag || arg.startsWith(`${flag}=`)),
    "extra_args may not set --host, --port or --served-model-name",
  );

/** Manager → agent: `POST /v1/instances`. Optional engine options may be absent. */
export const instanceSpecSchema = z.strictObject({
  alias: aliasSchema,
  model_name: modelNameSchema,
  max_model_len: z.number().int().min(1).max(maxContextTokens).optional(),
  gpu_memory_utilization: z.number().gt(0).lte(1).optional(),
  tensor_parallel_size: z.number().int().min(1).max(64).optional(),
  dtype: dtypeSchema.optional(),
  gpu_ids: gpuIdsSchema.default([]),
  extra_args: z.array(extraArgSchema).max(128).default([]),
  /** A port the manager asks for; the agent leases one from its range when absent. */
  port: portSchema.optional(),
});
export type InstanceSpec = z.infer<typeof instanceSpecSchema>;
export type InstanceSpecInput = z.input<typeof instanceSpecSchema>;

export const instanceStatusSchema = z.enum(["starting", "ready", "failed", "stopping", "stopped"]);
export type InstanceStatus = z.infer<typeof instanceStatusSchema>;

/**
 * The phases of an engine's launch, in the order vLLM goes through them (agent/lib/progress.ts
 * reads them from its log): `starting` until vLLM says anything we recognise, `downloading`
 * weights from the hub, `loading_weights` (shard percentage), `compiling` (torch.compile),
 * `profiling` (memory profile and KV cache, whose size in tokens is reported), `capturing_graphs`
 * (CUDA graphs, percentage), `api_server` (the HTTP server starting) and `ready`.
 */
export const launchPhases = [
  "starting",
  "downloading",
  "loading_weights",
  "compiling",
  "profiling",
  "capturing_graphs",
  "api_server",
  "ready",
] as const;
export const launchPhaseSchema = z.enum(launchPhases);
export type LaunchPhase = z.infer<typeof launchPhaseSchema>;

/**
 * How far an engine's launch has come, read from its own log. `eta_s` is the time to ready:
 * on the agent from the current phase's percentage only (`eta_basis: "phase"`, null when the
 * phase shows none); the manager replaces it with one from this model's earlier launches
 * when there are some (`eta_basis: "history"`).
 */
export const instanceProgressSchema = z.object({
  phase: launchPhaseSchema,
  /** The current phase's percentage (shards loaded, graphs captured); null when it has none. */
  percent: z.number().min(0).max(100).nullable(),
  /** Seconds since the engine process started. */
  elapsed_s: z.number().nonnegative(),
  eta_s: z.number().nonnegative().nullable(),
  /** The engine's last log line, without vLLM's process/level/time prefix. */
  last_line: z.string().max(512).nullable(),
  eta_basis: z.enum(["phase", "history"]).nullable().optional(),
  /** Seconds since the current phase began. */
  phase_elapsed_s: z.number().nonnegative().optional(),
  /** What the phase is at, e.g. `3/5 shards` or `decode, FULL 7/11`. */
  detail: z.string().max(200).nullable().optional(),
  /** `GPU KV cache size: N tokens`, once vLLM has said it. */
  kv_cache_tokens: z.number().int().nonnegative().nullable().optional(),
  /** When this launch's process started (a restart begins a new launch). */
  started_at: isoTimeSchema.optional(),
  /** The phases this launch has finished, in order, with how long each took. */
  phases: z
    .array(z.object({ phase: launchPhaseSchema, duration_s: z.number().nonnegative() }))
    .max(16)
    .optional(),
});
export type InstanceProgress = z.infer<typeof instanceProgressSchema>;

/** Agent → manager (and `GET /v1/instances`): one engine as the agent sees it. */
export const instanceReportSchema = z.object({
  alias: aliasSchema,
  model_name: z.string(),
  status: instanceStatusSchema,
  port: portSchema.nullable(),
  gpu_ids: z.array(z.number().int().min(0)),
  pid: z.number().int().nullable(),
  restarts: z.number().int().min(0),
  last_error: z.string().nullable(),
  started_at: isoTimeSchema.nullable(),
  ready_at: isoTimeSchema.nullable(),
  updated_at: isoTimeSchema,
  /** The spec it was launched with, so a restarted manager can adopt it without relaunching. */
  spec: instanceSpecSchema.optional(),
  /**
   * Launch progress, read from the engine's log (absent from agents before it existed; a
   * manager before it ignores it). Upgrade the manager before the agents when a release adds
   * a phase.
   */
  progress: instanceProgressSchema.optional(),
  /**
   * The engine's load as its agent last read it (protocol/load.ts); absent before the first
   * read and from agents before it existed.
   */
  load: engineLoadSchema.optional(),
});
export type InstanceReport = z.infer<typeof instanceReportSchema>;

export const instanceListSchema = z.object({ instances: z.array(instanceReportSchema) });
export type InstanceList = z.infer<typeof instanceListSchema>;

/**
 * `GET /v1/instances/{alias}/logs/lines?after=N&limit=M` (agent) and
 * `GET /v1/models/{alias}/logs/lines?worker_id=W&after=N&limit=M` (manager, with `worker_id`):
 * the engine's log lines from line `after` on (counted from the engine's first line), at most
 * `limit` of them, the latest when there are more. What `fleet logs --follow` polls.
 */
export const logLinesSchema = z.object({
  /** Names this engine's log: another value means a new engine replaced it (start over at 0). */
  stream: z.string(),
  /** Where the next call starts (`after`). */
  next: z.number().int().nonnegative(),
  /** Lines after `after` that are not in `lines` (rotated out, or beyond `limit`). */
  skipped: z.number().int().nonnegative(),
  lines: z.array(z.string()),
});
export type LogLines = z.infer<typeof logLinesSchema>;

export const logLinesQuerySchema = z.object({
  after: z.coerce.number().int().min(0).default(0),
  limit: z.coerce.number().int().min(1).max(10_000).default(1000),
});
