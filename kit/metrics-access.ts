import { bearerToken, constantTimeEqual } from "./crypto.ts";
import { AppError } from "./errors.ts";

/**
 * Who may read a `/metrics` page (docs/operations.md "Metrics"). Metrics name aliases, API
 * key ids and workers, so wherever tokens are in use they are behind one: the manager takes
 * ADMIN_TOKEN or METRICS_TOKEN, a standalone router METRICS_TOKEN, an agent its own agent
 * credential (checked by the agent's own middleware, not here).
 */
export type MetricsAccess =
  /** Nobody needs a token: the service runs open on loopback. */
  | { open: true }
  /** A bearer of one of `tokens` (none: refused with `hint`, which says what to set). */
  | { open: false; tokens: readonly string[]; hint: string };

/** Throws 401 `unauthorized` (OpenAI's shape) unless `authorization` may read the page. */
export function checkMetricsAccess(access: MetricsAccess, authorization: string | undefined): void {
  if (access.open) return;
  const presented = bearerToken(authorization);
  if (presented !== "" && access.tokens.some((token) => constantTimeEqual(presented, token))) {
    return;
  }
  throw new AppError("unauthorized", access.hint, { headers: { "www-authenticate": "Bearer" } });
}
