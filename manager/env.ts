import { z } from "zod";
import { dbEnvShape } from "../db/env.ts";
import {
  type ClientLimits,
  clientLimitsEnvShape,
  clientLimitsFromEnv,
} from "../kit/client-limits.ts";
import { type Cors, corsOriginsSchema } from "../kit/cors.ts";
import { logLevelSchema, shutdownTimeoutSchema } from "../kit/env.ts";
import { type HostAllowlist, parseHostAllowlist } from "../kit/host-allowlist.ts";
import { isLoopbackHost } from "../kit/net.ts";
import { baseUrlSchema } from "../protocol/index.ts";

const optionalToken = z
  .string()
  .trim()
  .optional()
  .transform((value) => (value ? value : undefined))
  .refine((value) => value === undefined || value.length >= 8, "must be at least 8 characters");

const seconds = (fallback: number) =>
  z.coerce
    .number({ error: "must be a number of seconds" })
    .positive()
    .max(86_400)
    .default(fallback);

/** The manager's environment, parsed once at the entry with `parseEnv`. */
export const managerEnvSchema = z.object({
  HOST: z.string().trim().min(1).default("127.0.0.1"),
  PORT: z.coerce
    .number({ error: "must be a port number (0-65535)" })
    .int()
    .min(0)
    .max(65535)
    .default(18000),
  LOG_LEVEL: logLevelSchema,
  /** From SIGTERM to the exit: in-flight requests finish until then, the rest are closed. */
  SHUTDOWN_TIMEOUT_S: shutdownTimeoutSchema,
  ...dbEnvShape,
  /** Cluster secret of agents (register, heartbeat); routers have their own credentials. */
  FLEET_TOKEN: optionalToken,
  /** Management API: models, workers, keys, routers. Also accepted on every other endpoint. */
  ADMIN_TOKEN: optionalToken,
  /** A scrape-only token: `GET /metrics` takes it (or ADMIN_TOKEN), and nothing else does. */
  METRICS_TOKEN: optionalToken,
  HEARTBEAT_INTERVAL_S: seconds(5),
  WORKER_TIMEOUT_S: seconds(20),
  /** How often `tick()` runs (liveness sweep, then reconciliation). */
  RECONCILE_INTERVAL_S: seconds(2),
  /** Extra wait after a worker goes offline before its instances are placed elsewhere. */
  RESCHEDULE_AFTER_S: z.coerce.number().min(0).max(86_400).default(60),
  LAUNCH_RETRY_BASE_S: seconds(5),
  LAUNCH_RETRY_MAX_S: seconds(300),
  /** An instance ready this long has its failure count (the backoff's exponent) forgotten. */
  LAUNCH_RETRY_RESET_S: seconds(600),
  /** Timeout of one manager → agent call (launch, stop). */
  AGENT_TIMEOUT_S: seconds(10),
  /**
   * How often each online worker's URLs are probed (`GET {url}/health`); 0 turns probing off
   * (no probe at registration either), for a manager that must never dial its workers' URLs
   * on its own.
   */
  PROBE_INTERVAL_S: z.coerce
    .number({ error: "must be a number of seconds" })
    .min(0)
    .max(86_400)
    .default(15),
  /** Timeout of one probe; a path that does not answer in time counts as unreachable. */
  PROBE_TIMEOUT_MS: z.coerce
    .number({ error: "must be a number of milliseconds" })
    .int()
    .min(50)
    .max(120_000)
    .default(3000),
  /**
   * The mounted router: a request waiting this long for its first byte has its replica
   * health-checked (docs/router.md "Dead replicas"); 0 = off.
   */
  FIRST_BYTE_PROBE_MS: z.coerce
    .number({ error: "must be a number of milliseconds" })
    .int()
    .min(0)
    .default(3000),
  /** The mounted router's health check timeout: no answer in time ejects the replica. */
  FIRST_BYTE_PROBE_TIMEOUT_MS: z.coerce
    .number({ error: "must be a number of milliseconds" })
    .int()
    .min(1)
    .default(2000),
  /**
   * The URL GPU hosts reach this manager at (`https://manager.example.com`), written into the
   * install line and `/install.sh`; unset: the listen address in the printed line and the URL
   * each `/install.sh` request came in on.
   */
  MANAGER_PUBLIC_URL: z.preprocess(
    (value) => (value === "" ? undefined : value),
    baseUrlSchema.optional(),
  ),
  /**
   * The agent executable `/downloads/fleet-agent` serves (gzipped: `{path}.gz` when the build
   * wrote one). Unset: `fleet-agent` beside this executable, else `dist/fleet-agent`.
   */
  AGENT_BINARY: z
    .string()
    .trim()
    .optional()
    .transform((value) => (value ? value : undefined)),
  /** How often the route snapshot checks `fleet_state.routes_version`. */
  ROUTES_POLL_MS: z.coerce.number().int().min(10).max(60_000).default(250),
  /** Bun: full GC when resident memory grew this much since the last one; 0 = off. */
  GC_GROWTH_MB: z.coerce.number().int().min(0).default(16),
  /**
   * Web pages that may read the mounted router's answers (kit/cors.ts): `*` (every origin,
   * as vLLM), `none`, or a comma-separated list of origins. The manager's own API is never
   * offered cross-origin, except the OpenAI model list.
   */
  CORS_ORIGINS: corsOriginsSchema,
  /** Slow clients, for the whole port and the mounted router's bodies (docs/operations.md). */
  ...clientLimitsEnvShape,
  /**
   * Where usage waits on disk while the database does not take it, so that a restart of the
   * manager loses none (default: `usage-spool` in FLEET_DATA_DIR).
   */
  USAGE_SPOOL_DIR: z
    .string()
    .trim()
    .optional()
    .transform((value) => (value ? value : undefined)),
  /** Cap of that spool in MiB; past it the oldest records go (counted). 0: no spool. */
  USAGE_SPOOL_MAX_MB: z.coerce.number().int().min(0).max(1_048_576).default(256),
  /**
   * Hosts a worker may advertise in `worker_url` and `public_worker_url`: host names,
   * `.suffix` domains, IP addresses or CIDR ranges, comma-separated. Unset: every host.
   */
  WORKER_URL_ALLOW: z
    .string()
    .optional()
    .transform((value, ctx): HostAllowlist | undefined => {
      if (value === undefined || value.trim() === "") return undefined;
      try {
        return parseHostAllowlist(value);
      } catch (error) {
        ctx.addIssue({ code: "custom", message: (error as Error).message });
        return z.NEVER;
      }
    }),
});
export type ManagerEnv = z.infer<typeof managerEnvSchema>;

/** What the manager's code reads; built from the env at the entry, or directly in tests. */
export type ManagerConfig = {
  host: string;
  port: number;
  fleetToken: string | undefined;
  adminToken: string | undefined;
  /** METRICS_TOKEN: `/metrics` only. */
  metricsToken?: string | undefined;
  heartbeatIntervalS: number;
  workerTimeoutS: number;
  reconcileIntervalS: number;
  rescheduleAfterS: number;
  launchRetryBaseS: number;
  launchRetryMaxS: number;
  launchRetryResetS: number;
  agentTimeoutS: number;
  probeIntervalS: number;
  probeTimeoutMs: number;
  routesPollMs: number;
  /** The mounted router's first-byte check (FIRST_BYTE_PROBE_MS, FIRST_BYTE_PROBE_TIMEOUT_MS). */
  firstByteProbe: { afterMs: number; timeoutMs: number };
  /** `WORKER_URL_ALLOW`: the hosts workers may advertise; undefined: every host. */
  workerUrlAllow: HostAllowlist | undefined;
  /** Header, body and keep-alive timeouts and body sizes (kit/client-limits.ts). */
  clientLimits: ClientLimits;
  /** `MANAGER_PUBLIC_URL`: where GPU hosts reach this manager; undefined: as each request came. */
  publicUrl: string | undefined;
  /** `CORS_ORIGINS`: which web pages may read the OpenAI surface; undefined: none. */
  cors: Cors | undefined;
};

export function configFromEnv(env: ManagerEnv): ManagerConfig {
  return {
    host: env.HOST,
    port: env.PORT,
    fleetToken: env.FLEET_TOKEN,
    adminToken: env.ADMIN_TOKEN,
    metricsToken: env.METRICS_TOKEN,
    heartbeatIntervalS: env.HEARTBEAT_INTERVAL_S,
    workerTimeoutS: env.WORKER_TIMEOUT_S,
    reconcileIntervalS: env.RECONCILE_INTERVAL_S,
    rescheduleAfterS: env.RESCHEDULE_AFTER_S,
    launchRetryBaseS: env.LAUNCH_RETRY_BASE_S,
    launchRetryMaxS: env.LAUNCH_RETRY_MAX_S,
    launchRetryResetS: env.LAUNCH_RETRY_RESET_S,
    agentTimeoutS: env.AGENT_TIMEOUT_S,
    probeIntervalS: env.PROBE_INTERVAL_S,
    probeTimeoutMs: env.PROBE_TIMEOUT_MS,
    routesPollMs: env.ROUTES_POLL_MS,
    firstByteProbe: {
      afterMs: env.FIRST_BYTE_PROBE_MS,
      timeoutMs: env.FIRST_BYTE_PROBE_TIMEOUT_MS,
    },
    workerUrlAllow: env.WORKER_URL_ALLOW,
    clientLimits: clientLimitsFromEnv(env),
    publicUrl: env.MANAGER_PUBLIC_URL,
    cors: env.CORS_ORIGINS,
  };
}

/** Defaults for every setting, with overrides: what tests and benchmarks start from. */
export function defaultConfig(overrides: Partial<ManagerConfig> = {}): ManagerConfig {
  return { ...configFromEnv(managerEnvSchema.parse({})), ...overrides };
}

/**
 * Bound to a non-loopback address the manager must have both tokens; on loopback without
 * them it runs open. Returns the problem, or undefined when the configuration may start.
 */
export function exposureProblem(config: ManagerConfig): string | undefined {
  if (isLoopbackHost(config.host)) return undefined;
  const missing = [
    config.fleetToken ? undefined : "FLEET_TOKEN",
    config.adminToken ? undefined : "ADMIN_TOKEN",
  ].filter(Boolean);
  if (missing.length === 0) return undefined;
  return `HOST=${config.host} is not a loopback address: set ${missing.join(" and ")} (or bind HOST=127.0.0.1)`;
}
