import type { MiddlewareHandler } from "hono";
import { bearerToken, constantTimeEqual } from "../kit/crypto.ts";
import { AppError } from "../kit/errors.ts";
import type { ManagerConfig } from "./env.ts";

/**
 * Who may call what. `admin` endpoints (models, workers list, keys) take ADMIN_TOKEN;
 * `fleet` endpoints (agent registration and heartbeats, route snapshots, usage batches)
 * take FLEET_TOKEN or ADMIN_TOKEN. A scope whose token is unset is open, which the entries
 * allow only on a loopback address.
 */
export type Scope = "admin" | "fleet";

export function isAuthorized(
  config: ManagerConfig,
  header: string | undefined,
  scope: Scope,
): boolean {
  const open = scope === "admin" ? !config.adminToken : !config.fleetToken;
  if (open) return true;
  const presented = bearerToken(header);
  if (presented === "") return false;
  if (config.adminToken && constantTimeEqual(presented, config.adminToken)) return true;
  return (
    scope === "fleet" &&
    config.fleetToken !== undefined &&
    constantTimeEqual(presented, config.fleetToken)
  );
}

/** Route middleware: 401 in OpenAI's shape unless the caller holds a token of `scope`. */
export function requireScope(config: ManagerConfig, scope: Scope): MiddlewareHandler {
  return async (c, next) => {
    if (!isAuthorized(config, c.req.header("authorization"), scope)) {
      throw new AppError(
        "unauthorized",
        scope === "admin"
          ? "this endpoint needs Authorization: Bearer ADMIN_TOKEN"
          : "this endpoint needs Authorization: Bearer FLEET_TOKEN (or ADMIN_TOKEN)",
      );
    }
    await next();
  };
}
