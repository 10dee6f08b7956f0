import { hostname } from "node:os";
import { z } from "zod";
import { logLevelSchema, parseEnv, shutdownTimeoutSchema } from "../kit/env.ts";
import { baseUrlSchema, workerIdSchema, workerUrlSchema } from "../protocol/index.ts";
import type { WorkerServiceOptions } from "./options.ts";

const optionalString = z
  .string()
  .trim()
  .optional()
  .transform((value) => (value === "" ? undefined : value));

/** Unset and empty both mean "not given". */
const optionalUrl = z.preprocess(
  (value) => (value === "" ? undefined : value),
  workerUrlSchema.optional(),
);

/** `1`/`true`/`yes` on, `0`/`false`/`no`/empty/unset off. */
const flag = z
  .string()
  .trim()
  .toLowerCase()
  .optional()
  .transform((value, ctx) => {
    if (value === undefined || value === "" || ["0", "false", "no"].includes(value)) return false;
    if (["1", "true", "yes"].includes(value)) return true;
    ctx.addIssue({ code: "custom", message: "must be 1 or 0" });
    return z.NEVER;
  });

const seconds = (fallback: number) => z.coerce.number().positive().default(fallback);
const port = z.coerce.number().int().min(1).max(65535);

/** The agent's environment: the original system's names, plus engine supervision knobs. */
export const agentEnvSchema = z
  .object({
    WORKER_ID: workerIdSchema.optional(),
    WORKER_HOST: z.string().trim().min(1).default("0.0.0.0"),
    WORKER_PORT: z.coerce
      .number({ error: "must be a port number (0-65535)" })
      .int()
      .min(0)
      .max(65535)
      .default(6006),
    MANAGER_URL: baseUrlSchema.default("http://localhost:18000"),
    PUBLIC_URL: optionalUrl,
    WORKER_URL: optionalUrl,
    FLEET_TOKEN: optionalString,
    /** The agent's own files (its credentials), relative to the working directory. */
    AGENT_DATA_DIR: z.string().trim().min(1).default(".fleet/agent"),
    /** How long the previous agent credential still works after a rotation. */
    AGENT_TOKEN_GRACE_S: seconds(120),
    VLLM_BIN: z.string().trim().min(1).default("vllm"),
    NVIDIA_SMI_BIN: z.string().trim().min(1).default("nvidia-smi"),
    ENGINE_PORT_MIN: port.default(8100),
    ENGINE_PORT_MAX: port.default(8999),
    ENGINE_STARTUP_TIMEOUT_S: seconds(1200),
    ENGINE_STOP_GRACE_S: seconds(30),
    ENGINE_RESTART_BACKOFF_S: seconds(1),
    ENGINE_RESTART_BACKOFF_MAX_S: seconds(60),
    ENGINE_HEALTH_POLL_MS: z.coerce.number().int().min(10).default(500),
    /** How often each ready engine's /metrics is read for its load; 0 = never. */
    ENGINE_LOAD_POLL_MS: z.coerce.number().int().min(0).max(60_000).default(1000),
    /** How long an engine adopted from a previous agent may take to answer as itself. */
    ENGINE_ADOPT_GRACE_S: seconds(60),
    /** `1`: stopping the agent leaves its engines running for the next agent to adopt. */
    AGENT_KEEP_ENGINES: flag,
    MANAGER_RETRY_MAX_S: seconds(30),
    /** SIGTERM: how long the agent waits for in-flight proxied requests (docs/agent.md "Drain"). */
    DRAIN_TIMEOUT_S: z.coerce.number().min(0).max(86_400).default(30),
    /** The drain ends early once nothing has been in flight for this long (stale routers). */
    DRAIN_QUIET_MS: z.coerce.number().int().min(0).max(600_000).default(2000),
    /** After the drain: stop accepting, close what is open, stop the engines, exit. */
    SHUTDOWN_TIMEOUT_S: shutdownTimeoutSchema,
    LOG_LEVEL: logLevelSchema,
    /** Bun's cap on in-flight fetches (default 256); the entry raises it unless set. */
    BUN_CONFIG_MAX_HTTP_REQUESTS: z.coerce.number().int().min(1).max(65535).optional(),
  })
  .superRefine((env, ctx) => {
    if (env.ENGINE_PORT_MIN > env.ENGINE_PORT_MAX) {
      ctx.addIssue({
        code: "custom",
        path: ["ENGINE_PORT_MIN"],
        message: "must not be above ENGINE_PORT_MAX",
      });
    }
    // FLEET_TOKEN beyond loopback: checked by WorkerService, which knows whether the agent
    // has joined already (its credentials file).
  });
export type AgentEnv = z.infer<typeof agentEnvSchema>;

/** Parses the agent's environment (throws an `EnvError` naming the bad variables). */
export function loadAgentEnv(source: Record<string, string | undefined>): AgentEnv {
  return parseEnv(agentEnvSchema, source);
}

/** Maps the parsed environment onto `WorkerService` options. */
export function serviceOptionsFromEnv(
  env: AgentEnv,
  engineEnv: Record<string, string | undefined>,
): WorkerServiceOptions {
  return {
    workerId: env.WORKER_ID ?? hostname(),
    listenHost: env.WORKER_HOST,
    listenPort: env.WORKER_PORT,
    managerUrl: env.MANAGER_URL,
    publicUrl: env.PUBLIC_URL ?? null,
    workerUrl: env.WORKER_URL,
    fleetToken: env.FLEET_TOKEN,
    dataDir: env.AGENT_DATA_DIR,
    agentTokenGraceMs: env.AGENT_TOKEN_GRACE_S * 1000,
    vllmBin: env.VLLM_BIN,
    nvidiaSmiBin: env.NVIDIA_SMI_BIN,
    enginePorts: { min: env.ENGINE_PORT_MIN, max: env.ENGINE_PORT_MAX },
    startupTimeoutMs: env.ENGINE_STARTUP_TIMEOUT_S * 1000,
    stopGraceMs: env.ENGINE_STOP_GRACE_S * 1000,
    restartBackoffMs: env.ENGINE_RESTART_BACKOFF_S * 1000,
    restartBackoffMaxMs: env.ENGINE_RESTART_BACKOFF_MAX_S * 1000,
    healthPollMs: env.ENGINE_HEALTH_POLL_MS,
    loadPollMs: env.ENGINE_LOAD_POLL_MS,
    adoptGraceMs: env.ENGINE_ADOPT_GRACE_S * 1000,
    keepEngines: env.AGENT_KEEP_ENGINES,
    registerRetryMaxMs: env.MANAGER_RETRY_MAX_S * 1000,
    drainTimeoutMs: env.DRAIN_TIMEOUT_S * 1000,
    drainQuietMs: env.DRAIN_QUIET_MS,
    shutdownTimeoutMs: env.SHUTDOWN_TIMEOUT_S * 1000,
    logLevel: env.LOG_LEVEL,
    engineEnv,
  };
}

/**
 * The environment engines inherit (PATH, HF_HOME, HF_TOKEN, ...), read here because this is
 * the one module that reads `process.env`. The agent's own secret is never passed on.
 */
export function inheritedEnv(): Record<string, string | undefined> {
  return { ...process.env };
}
