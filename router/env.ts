import { z } from "zod";
import { clientLimitsEnvShape, clientLimitsProblem } from "../kit/client-limits.ts";
import { corsOriginsSchema } from "../kit/cors.ts";
import { EnvError, logLevelSchema, parseEnv, shutdownTimeoutSchema } from "../kit/env.ts";
import { baseUrlSchema } from "../protocol/index.ts";

const optionalString = z
  .string()
  .trim()
  .optional()
  .transform((value) => (value === "" ? undefined : value));
const ms = (fallback: number) => z.coerce.number().int().min(1).default(fallback);
const flag = z
  .enum(["true", "false", "1", "0", "yes", "no", ""])
  .optional()
  .transform((value) =>
    value === undefined || value === "" ? undefined : ["true", "1", "yes"].includes(value),
  );

/** A standalone or edge router's environment (the manager mounts the app with its own). */
export const routerEnvSchema = z.object({
  MANAGER_URL: baseUrlSchema.default("http://localhost:18000"),
  /** This router's credential (`fleet routers create NAME`): reads routes, posts usage. */
  ROUTER_TOKEN: optionalString,
  /**
   * Not used: each route carries its agent's own credential. Read only to stop a router
   * configured as before router credentials (FLEET_TOKEN without ROUTER_TOKEN).
   */
  FLEET_TOKEN: optionalString,
  /**
   * What `GET /metrics` takes (`Authorization: Bearer <it>`): a scrape-only token for
   * Prometheus, which opens nothing else. Unset, /metrics is open only while the router is
   * (no ROUTER_TOKEN, on loopback, API keys not required), and refused otherwise.
   */
  METRICS_TOKEN: optionalString,
  HOST: z.string().trim().min(1).default("127.0.0.1"),
  LOG_LEVEL: logLevelSchema,
  /** Bun and Node: from SIGTERM to the exit; in-flight requests finish until then. */
  SHUTDOWN_TIMEOUT_S: shutdownTimeoutSchema,
  PORT: z.coerce.number().int().min(0).max(65535).default(18080),
  /** Header, body and keep-alive timeouts; body size and the memory all bodies may hold. */
  ...clientLimitsEnvShape,
  /**
   * Web pages that may read the OpenAI surface's answers (kit/cors.ts): `*` (every origin,
   * as vLLM), `none`, or a comma-separated list of origins.
   */
  CORS_ORIGINS: corsOriginsSchema,
  /** Require `Authorization: Bearer <key>` even with no key defined (default: when HOST is not loopback). */
  REQUIRE_API_KEY: flag,
  CONNECT_TIMEOUT_MS: ms(5000),
  /**
   * Bun: how the router reaches agents (runtime/upstream-fetch.ts): `auto` (Bun's fetch for
   * non-streamed requests, runtime/http1-fetch.ts for streams), `http1` or `fetch` for all.
   */
  UPSTREAM_CLIENT: z.enum(["auto", "fetch", "http1"]).default("auto"),
  /** Bun's cap on in-flight fetches, read at startup (default 256); needed by `auto` and `fetch`. */
  BUN_CONFIG_MAX_HTTP_REQUESTS: z.coerce.number().int().min(1).max(65535).optional(),
  FIRST_BYTE_TIMEOUT_MS: ms(600_000),
  /**
   * A request waiting this long for its first byte has its replica health-checked
   * (`GET {worker_url}/health`), and again every as long while it waits; 0 = off.
   */
  FIRST_BYTE_PROBE_MS: z.coerce.number().int().min(0).default(3000),
  /** The health check's own timeout: no answer in time ejects the replica. */
  FIRST_BYTE_PROBE_TIMEOUT_MS: ms(2000),
  IDLE_TIMEOUT_MS: ms(300_000),
  RETRY_MAX_ATTEMPTS: z.coerce.number().int().min(1).max(10).default(3),
  RETRY_BUDGET_MS: ms(30_000),
  /** Consecutive transport failures (or 502/503/504) before a replica is ejected. */
  EJECT_AFTER_FAILURES: z.coerce.number().int().min(1).default(3),
  /** First ejection cool-down; doubles on each failed probe, up to 60 s or this, if larger. */
  EJECT_COOLDOWN_MS: ms(5000),
  ROUTES_REFRESH_MS: ms(1000),
  USAGE_FLUSH_MS: ms(1000),
  USAGE_BUFFER_MAX: z.coerce.number().int().min(100).default(50_000),
  /**
   * Bun and Node: where usage waits on disk while the manager does not take it, so that a
   * restart of the router loses none (relative paths from the working directory).
   */
  USAGE_SPOOL_DIR: z.string().trim().min(1).default(".fleet/router-usage"),
  /** Cap of that spool in MiB; past it the oldest records go (counted). 0: no spool. */
  USAGE_SPOOL_MAX_MB: z.coerce.number().int().min(0).max(1_048_576).default(256),
  /** Bun: full GC when resident memory grew this much since the last one; 0 = off. */
  GC_GROWTH_MB: z.coerce.number().int().min(0).default(16),
});
export type RouterEnv = z.infer<typeof routerEnvSchema>;

/**
 * Said when a router has FLEET_TOKEN and no ROUTER_TOKEN: the configuration of routers that
 * predate router credentials, which the manager now refuses (the join token only admits
 * new agents). Stopping at startup says so once, instead of a 401 on every poll.
 */
export const routerTokenMissing =
  "ROUTER_TOKEN must be set: FLEET_TOKEN is the agents' join token and does not read routes or post usage. Create a router credential on the manager with `fleet routers create NAME` (the token is shown once) and give it to this router as ROUTER_TOKEN";

export function loadRouterEnv(source: Record<string, string | undefined>): RouterEnv {
  const env = parseEnv(routerEnvSchema, source);
  if (env.FLEET_TOKEN && !env.ROUTER_TOKEN) {
    throw new EnvError(`invalid environment: ${routerTokenMissing}`);
  }
  const limitsProblem = clientLimitsProblem(env);
  if (limitsProblem) throw new EnvError(`invalid environment: ${limitsProblem}`);
  return env;
}

/** For the Bun and Node entries: a bad variable prints what is wrong and exits with 1. */
export function loadRouterEnvOrExit(source: Record<string, string | undefined>): RouterEnv {
  try {
    return loadRouterEnv(source);
  } catch (error) {
    if (!(error instanceof EnvError)) throw error;
    console.error(error.message);
    process.exit(1);
  }
}
