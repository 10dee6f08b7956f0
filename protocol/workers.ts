import { z } from "zod";
import { isoTimeSchema, workerIdSchema, workerUrlSchema } from "./common.ts";
import { gpuInfoSchema } from "./gpus.ts";
import { instanceReportSchema } from "./instances.ts";
import { instanceRecordStatusSchema } from "./models.ts";

/**
 * `online`: heartbeating, placements and routes; `draining`: its agent is stopping (it said so
 * at `POST /v1/workers/{id}/drain`): no new placements and its routes are not served, while
 * it finishes what is in flight; `offline`: silent for WORKER_TIMEOUT_S.
 */
export const workerStatuses = ["online", "draining", "offline"] as const;
export const workerStatusSchema = z.enum(workerStatuses);
export type WorkerStatus = z.infer<typeof workerStatusSchema>;

/** Agent → manager: `POST /v1/workers/register`. Idempotent per `worker_id`. */
export const workerRegistrationSchema = z.object({
  worker_id: workerIdSchema,
  /** The internal URL the manager dials (`http://127.0.0.1:6006` for an agent on 0.0.0.0). */
  worker_url: workerUrlSchema,
  /** `PUBLIC_URL`: how the outside world reaches the agent through port forwarding. */
  public_worker_url: workerUrlSchema.nullable().default(null),
  gpu_info: gpuInfoSchema,
  instances: z.array(instanceReportSchema).max(256).default([]),
  agent_version: z.string().max(64),
  labels: z.record(z.string().max(64), z.string().max(256)).default({}),
});
export type WorkerRegistration = z.infer<typeof workerRegistrationSchema>;
export type WorkerRegistrationInput = z.input<typeof workerRegistrationSchema>;

/**
 * A worker's own pair of secrets, handed to its agent once: in the registration reply when it
 * joined with the join token, in a heartbeat reply when an operator asked for a rotation.
 * `worker_credential` (`fw_…`) is what the agent presents to the manager (registrations,
 * heartbeats); `agent_token` (`fa_…`) is what the manager and routers present to that agent.
 */
export const workerCredentialsSchema = z.object({
  worker_credential: z.string().startsWith("fw_").min(16).max(256),
  agent_token: z.string().startsWith("fa_").min(16).max(256),
});
export type WorkerCredentials = z.infer<typeof workerCredentialsSchema>;

export const workerRegistrationReplySchema = z.object({
  worker_id: workerIdSchema,
  status: workerStatusSchema,
  heartbeat_interval_s: z.number().positive(),
  registered_at: isoTimeSchema,
  /** Only when this registration joined with the join token: shown once, never again. */
  credentials: workerCredentialsSchema.optional(),
});
export type WorkerRegistrationReply = z.infer<typeof workerRegistrationReplySchema>;

/** Agent → manager: `POST /v1/workers/{worker_id}/heartbeat`. 404 means register again. */
export const heartbeatSchema = z.object({
  gpu_info: gpuInfoSchema,
  instances: z.array(instanceReportSchema).max(256).default([]),
});
export type Heartbeat = z.infer<typeof heartbeatSchema>;

export const heartbeatReplySchema = z.object({
  heartbeat_interval_s: z.number().positive(),
  /**
   * A rotation: the new pair, which the agent stores and uses from its next request on. The
   * manager promotes it when it first sees the new worker credential.
   */
  credentials: workerCredentialsSchema.optional(),
});
export type HeartbeatReply = z.infer<typeof heartbeatReplySchema>;

/**
 * Agent → manager: `POST /v1/workers/{worker_id}/drain` when the agent is stopping (SIGTERM,
 * Ctrl-C). Its routes stop being served at once; it finishes what is in flight for up to
 * `timeout_s`, then stops its engines and exits.
 */
export const workerDrainSchema = z.object({
  /** Why it stops, for the events and the log (`SIGTERM`, `SIGINT`). */
  reason: z.string().trim().min(1).max(200).default("agent stopping"),
  /** How long the agent waits for in-flight requests (its DRAIN_TIMEOUT_S). */
  timeout_s: z.number().nonnegative().max(86_400).optional(),
});
export type WorkerDrain = z.infer<typeof workerDrainSchema>;
export type WorkerDrainInput = z.input<typeof workerDrainSchema>;

export const workerDrainReplySchema = z.object({
  worker_id: workerIdSchema,
  status: z.literal("draining"),
  /** Routes of this worker that were served and no longer are (0 when it was draining already). */
  routes_unserved: z.number().int().nonnegative(),
  /** The route snapshot's version after the change: routers that hold it no longer route here. */
  routes_version: z.string().nullable(),
});
export type WorkerDrainReply = z.infer<typeof workerDrainReplySchema>;

/**
 * One instance in `WorkerInfo`: the agent's report fields as the manager last recorded them,
 * with the manager's instance id and its status, which adds `pending` (placed, launch not yet
 * accepted) and `lost` (the worker went offline) to the agent's statuses.
 */
export const workerInstanceSchema = instanceReportSchema.omit({ spec: true }).extend({
  id: z.string(),
  status: instanceRecordStatusSchema,
});
export type WorkerInstance = z.infer<typeof workerInstanceSchema>;

/**
 * The problem a worker whose public URL is plain http on the internet has (`fleet workers ls`
 * flags it as `plain-http`).
 */
export const plainHttpProblemText =
  "public URL is plain http: prompts and credentials cross the internet in clear; use the https URL your provider gives";

/** Which of a worker's URLs the manager's management calls use. */
export const managementPathSchema = z.enum(["internal", "public"]);
export type ManagementPath = z.infer<typeof managementPathSchema>;

/** One URL of a worker as the manager's last probe (`GET {url}/health`) found it. */
export const workerPathSchema = z.object({
  url: z.string(),
  /** Null until the first probe of this path completes. */
  reachable: z.boolean().nullable(),
  /** Round-trip time of the last probe that got the agent's answer. */
  rtt_ms: z.number().int().nonnegative().nullable(),
  /** Why the last probe did not count (refused, timed out, another agent answered…). */
  error: z.string().nullable(),
});
export type WorkerPath = z.infer<typeof workerPathSchema>;

/**
 * The original system's `WorkerInfo`: what `GET /v1/workers` lists, plus how the manager
 * reaches the worker (`paths`, `management_path`) and what an operator should fix (`problems`).
 */
export const workerInfoSchema = z.object({
  worker_id: workerIdSchema,
  worker_url: z.string(),
  public_worker_url: z.string().nullable(),
  gpu_info: gpuInfoSchema,
  last_heartbeat: isoTimeSchema,
  status: workerStatusSchema,
  instances: z.array(workerInstanceSchema),
  agent_version: z.string().nullable(),
  registered_at: isoTimeSchema,
  labels: z.record(z.string(), z.string()),
  paths: z.object({ internal: workerPathSchema, public: workerPathSchema.nullable() }),
  /** The path the probes found answering (internal first); null when none does (yet). */
  management_path: managementPathSchema.nullable(),
  /** When the last probe of this worker began; null before the first. */
  probed_at: isoTimeSchema.nullable(),
  /** What an operator should fix about this worker, one sentence each; empty when nothing. */
  problems: z.array(z.string()),
});
export type WorkerInfo = z.infer<typeof workerInfoSchema>;

/** `GET /v1/workers`. */
export const workerListSchema = z.object({ workers: z.array(workerInfoSchema) });
export type WorkerList = z.infer<typeof workerListSchema>;

/** `POST /v1/workers/{worker_id}/rotate` (202): the next heartbeat reply carries the new pair. */
export const workerRotationReplySchema = z.object({
  worker_id: workerIdSchema,
  status: z.literal("rotation_requested"),
});
export type WorkerRotationReply = z.infer<typeof workerRotationReplySchema>;

/**
 * `DELETE /v1/workers/{worker_id}`: the worker is gone (its credentials stop working), and
 * each of its instances was either placed on another worker (`rescheduled`) or, with no room
 * anywhere or a model pinned to that worker, dropped (the model runs short of replicas).
 */
export const workerRemovalReplySchema = z.object({
  worker_id: workerIdSchema,
  deleted: z.literal(true),
  rescheduled: z.array(
    z.object({ alias: z.string(), instance_id: z.string(), worker_id: workerIdSchema }),
  ),
  dropped: z.array(z.object({ alias: z.string(), reason: z.string() })),
});
export type WorkerRemovalReply = z.infer<typeof workerRemovalReplySchema>;

/** `POST /v1/workers/install-command` (`fleet workers add`): the line that adds this host. */
export const installCommandRequestSchema = z
  .object({
    worker_id: workerIdSchema,
    /** Its port-forwarding URL, which routers use. */
    public_url: workerUrlSchema.optional(),
    /** An address on the manager's network, for a host without a port mapping. */
    worker_url: workerUrlSchema.optional(),
  })
  .strict();
export type InstallCommandRequest = z.infer<typeof installCommandRequestSchema>;

/** The path of the per-worker endpoints (`/v1/workers/{worker_id}/…`). */
export const workerIdParamsSchema = z.object({ worker_id: workerIdSchema });

export const installCommandReplySchema = z.object({
  /** `curl -fsSL {manager}/install.sh | FLEET_TOKEN=… WORKER_ID=… PUBLIC_URL=… sh`. */
  command: z.string(),
  /** Where the line downloads from: MANAGER_PUBLIC_URL, else the URL this request came to. */
  manager_url: z.string(),
  /** Whether the manager has an agent executable to hand out (else: `npm run build:agent`). */
  agent_available: z.boolean(),
  /**
   * Present when the worker id has joined already: the line upgrades the agent on its own
   * host, and a join from any other host is refused until the worker is removed.
   */
  warning: z.string().optional(),
});
export type InstallCommandReply = z.infer<typeof installCommandReplySchema>;
