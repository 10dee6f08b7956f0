import { z } from "zod";
import {
  aliasSchema,
  dtypeSchema,
  gpuIdsSchema,
  isoTimeSchema,
  maxContextTokens,
  portSchema,
} from "./common.ts";

/**
 * Flags the agent sets itself. `extra_args` may not carry them: the engine must stay on
 * loopback behind the agent's authenticated proxy, on the port the agent leased.
 */
export const reservedEngineFlags = ["--host", "--port", "--served-model-name"] as const;

/** One extra `vllm serve` argument, passed through verbatim (no shell is ever involved). */
export const extraArgSchema = z
  .string()
  .max(4096)
  .refine(
    (arg) => !reservedEngineFlags.some((flag) => arg === flag || arg.startsWith(`${flag}=`)),
    "extra_args may not set --host, --port or --served-model-name",
  );

/** Manager → agent: `POST /v1/instances`. Optional engine options may be absent. */
export const instanceSpecSchema = z.strictObject({
  alias: aliasSchema,
  model_name: z.string().min(1).max(512),
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
});
export type InstanceReport = z.infer<typeof instanceReportSchema>;

export const instanceListSchema = z.object({ instances: z.array(instanceReportSchema) });
export type InstanceList = z.infer<typeof instanceListSchema>;
