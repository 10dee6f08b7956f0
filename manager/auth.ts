import type { MiddlewareHandler } from "hono";
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
  const presented = bearer(header);
  if (presented === undefined) return false;
  if (config.adminToken && safeEqual(presented, config.adminToken)) return true;
  return (
    scope === "fleet" && config.fleetToken !== undefined && safeEqual(presented, config.fleetToken)
  );
}

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

function bearer(header: string | undefined): string | undefined {
  if (!header) return undefined;
  const match = /^Bearer\s+(.+)$/i.exec(header.trim());
  return match?.[1]?.trim();
}

/** Compares in time that depends only on the lengths, not on where the strings differ. */
export function safeEqual(a: string, b: string): boolean {
  const length = Math.max(a.length, b.length);
  let diff = a.length ^ b.length;
  for (let i = 0; i < length; i++) diff |= (a.charCodeAt(i) | 0) ^ (b.charCodeAt(i) | 0);
  return diff === 0;
}
