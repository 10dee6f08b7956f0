import { z } from "zod";
import { logLevels } from "./log.ts";

export class EnvError extends Error {
  override name = "EnvError";
}

/**
 * Parses a service's environment once, at its entry. A bad value throws an `EnvError`
 * whose message names every offending variable, e.g.
 * `invalid environment: DATABASE_URL must be a postgres:// or postgresql:// URL`.
 * Values are never echoed: they may hold tokens or passwords.
 */
export function parseEnv<S extends z.ZodType>(
  schema: S,
  source: Record<string, string | undefined>,
): z.infer<S> {
  const result = schema.safeParse(source);
  if (result.success) return result.data;
  const problems = result.error.issues.map(
    (issue) => `${issue.path.join(".") || "environment"} ${issue.message}`,
  );
  throw new EnvError(`invalid environment: ${problems.join("; ")}`);
}

/**
 * `SHUTDOWN_TIMEOUT_S` of every service: from SIGTERM to the exit (kit/shutdown.ts); for the
 * agent, from the end of its drain.
 */
export const shutdownTimeoutSchema = z.coerce
  .number({ error: "must be a number of seconds" })
  .positive()
  .max(3600)
  .default(30);

/** `LOG_LEVEL` of every service. */
export const logLevelSchema = z.enum(logLevels).default("info");
