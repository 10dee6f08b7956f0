import { z } from "zod";
import {
  aliasSchema,
  dtypeSchema,
  gpuIdsSchema,
  isoTimeSchema,
  maxContextTokens,
  portSchema,
  workerIdSchema,
} from "./common.ts";
import { extraArgSchema, instanceProgressSchema, modelNameSchema } from "./instances.ts";
import { modelRouteSchema, routingPolicySchema } from "./routes.ts";

export const placementStrategySchema = z.enum(["binpack", "spread"]);
export type PlacementStrategy = z.infer<typeof placementStrategySchema>;

/** `POST /v1/models/register` on the manager. */
export const modelRegistrationSchema = z.strictObject({
  alias: aliasSchema,
  model_name: modelNameSchema,
  max_model_len: z.number().int().min(1).max(maxContextTokens).optional(),
  gpu_memory_utilization: z.number().gt(0).lte(1).default(0.9),
  tensor_parallel_size: z.number().int().min(1).max(64).default(1),
  replicas: z.number().int().min(1).max(64).default(1),
  dtype: dtypeSchema.optional(),
  /** Pin to one worker (and optionally to GPUs on it); refused when the pin cannot be met. */
  worker_id: workerIdSchema.optional(),
  gpu_ids: gpuIdsSchema.min(1).optional(),
  extra_args: z.array(extraArgSchema).max(128).default([]),
  placement: placementStrategySchema.default("binpack"),
  /** How routers choose among its replicas (docs/router.md "Routing policies"). */
  routing: routingPolicySchema.default("prefix_affinity"),
});
export type ModelRegistration = z.infer<typeof modelRegistrationSchema>;
export type ModelRegistrationInput = z.input<typeof modelRegistrationSchema>;

/**
 * The manager's view of an instance (desired placement plus what the agent last reported).
 * `pending`: placed, launch not yet accepted by the agent; `lost`: its worker went offline.
 * The one list of instance statuses: the `instances.status` column and its check are built
 * from it. Transitions between them: manager/services/lifecycle.ts and docs/manager.md.
 */
export const instanceRecordStatuses = [
  "pending",
  "starting",
  "ready",
  "failed",
  "stopping",
  "stopped",
  "lost",
] as const;
export const instanceRecordStatusSchema = z.enum(instanceRecordStatuses);
export type InstanceRecordStatus = z.infer<typeof instanceRecordStatusSchema>;

/**
 * Statuses whose GPU claims count against placement: the engine runs, is on its way, or may
 * still run on a worker that went silent. `failed` and `stopped` hold no claim.
 */
export const claimingInstanceStatuses = [
  "pending",
  "starting",
  "ready",
  "stopping",
  "lost",
] as const satisfies readonly InstanceRecordStatus[];

export const instanceRecordSchema = z.object({
  id: z.string(),
  alias: aliasSchema,
  worker_id: workerIdSchema,
  gpu_ids: z.array(z.number().int().min(0)),
  gpu_memory_utilization: z.number(),
  port: portSchema.nullable(),
  pid: z.number().int().nullable(),
  status: instanceRecordStatusSchema,
  restarts: z.number().int().min(0),
  last_error: z.string().nullable(),
  created_at: isoTimeSchema,
  updated_at: isoTimeSchema,
  ready_at: isoTimeSchema.nullable(),
  /**
   * The launch's progress as the agent last reported it (clocks moved on to now), with an
   * ETA from this model's earlier launches when there are any; null before the agent's first
   * report of this launch (and from agents that do not report it).
   */
  progress: instanceProgressSchema.nullable().optional(),
  /** A failed instance: when the manager retries it at the earliest (it always does). */
  next_retry_at: isoTimeSchema.nullable().optional(),
});
export type InstanceRecord = z.infer<typeof instanceRecordSchema>;

/**
 * `POST /v1/instances/{id}/restart`: who asks and why, both optional and only recorded in the
 * `instance.restarted` event (the admin token is what authorises it). An empty body is `{}`.
 */
export const instanceRestartSchema = z.strictObject({
  /** Who asks, as the caller names itself (`fleet` names the user and host, the console itself). */
  requested_by: z.string().trim().min(1).max(200).optional(),
  reason: z.string().trim().max(500).optional(),
});
export type InstanceRestart = z.infer<typeof instanceRestartSchema>;

/** The path of `POST /v1/instances/{id}/restart`: an instance id as `GET /v1/models/{alias}` lists it. */
export const instanceIdParamsSchema = z.object({
  id: z.uuid("an instance id is a UUID, as GET /v1/models/{alias} lists it under instances[].id"),
});

export const modelStatusSchema = z.enum(["starting", "ready", "degraded", "failed"]);
export type ModelStatus = z.infer<typeof modelStatusSchema>;

/** `GET /v1/models/{alias}` and the 201 of `POST /v1/models/register`. */
export const modelInfoSchema = z.object({
  alias: aliasSchema,
  model_name: z.string(),
  status: modelStatusSchema,
  max_model_len: z.number().int().nullable(),
  gpu_memory_utilization: z.number(),
  tensor_parallel_size: z.number().int(),
  replicas: z.number().int(),
  dtype: dtypeSchema.nullable(),
  worker_id: workerIdSchema.nullable(),
  gpu_ids: z.array(z.number().int()).nullable(),
  extra_args: z.array(z.string()),
  placement: placementStrategySchema,
  routing: routingPolicySchema,
  created_at: isoTimeSchema,
  instances: z.array(instanceRecordSchema),
  routes: z.array(modelRouteSchema),
});
export type ModelInfo = z.infer<typeof modelInfoSchema>;

/** OpenAI's model list, as `GET /v1/models` answers on both the manager and the router. */
export const openAiModelSchema = z.object({
  id: z.string(),
  object: z.literal("model"),
  created: z.number().int(),
  owned_by: z.string(),
});
export const openAiModelListSchema = z.object({
  object: z.literal("list"),
  data: z.array(openAiModelSchema.passthrough()),
});
export type OpenAiModelList = z.infer<typeof openAiModelListSchema>;
