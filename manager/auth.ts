import type { MiddlewareHandler } from "hono";
import { bearerToken, constantTimeEqual } from "../kit/crypto.ts";
import { AppError } from "../kit/errors.ts";
import type { MetricsAccess } from "../kit/metrics-access.ts";
import type { ManagerConfig } from "./env.ts";
import type { RouterCredentials } from "./services/router-credentials.ts";

/**
 * Who may call what. `admin` endpoints (models, workers list, keys, router credentials) take
 * ADMIN_TOKEN; `router` endpoints (route snapshots, usage batches) take a router credential
 * (`POST /v1/routers`) or ADMIN_TOKEN. ADMIN_TOKEN unset leaves `admin` open, which the
 * entries allow only on a loopback address; the `router` scope is open only when neither
 * token is set (the open mode), since its credentials are issued by an admin. Agents'
 * registrations and heartbeats are checked by worker identity (worker-auth.ts).
 */
export type Scope = "admin" | "router";

/** What a scope check reads: the tokens, and the `routers` table for router credentials. */
export type AuthContext = {
  config: ManagerConfig;
  routerCredentials: Pick<RouterCredentials, "check">;
};

/** The check of a token scope, which needs no database (`router` needs `checkScope`). */
export function isAuthorized(
  config: ManagerConfig,
  header: string | undefined,
  scope: Exclude<Scope, "router">,
): boolean {
  // `admin` is the only scope without a database check.
  if (scope !== "admin" || !config.adminToken) return true;
  const presented = bearerToken(header);
  return presented !== "" && constantTimeEqual(presented, config.adminToken);
}

const routerNeeds =
  "this endpoint needs Authorization: Bearer <router credential> (create one with: fleet routers create NAME) or ADMIN_TOKEN";

/** Why a caller may not use `router` endpoints, or undefined when it may. */
async function routerRefusal(
  ctx: AuthContext,
  header: string | undefined,
): Promise<string | undefined> {
  const { config } = ctx;
  if (!config.adminToken && !config.fleetToken) return undefined;
  const presented = bearerToken(header);
  if (presented === "") return routerNeeds;
  if (config.adminToken && constantTimeEqual(presented, config.adminToken)) return undefined;
  const check = await ctx.routerCredentials.check(presented);
  if (check.ok) return undefined;
  if (check.revoked) {
    return "this router credential has been revoked; create a new one with: fleet routers create NAME";
  }
  if (config.fleetToken && constantTimeEqual(presented, config.fleetToken)) {
    // Routers that predate router credentials send the join token: say what to do instead.
    return "FLEET_TOKEN is the agents' join token and does not read routes or post usage: create a router credential with `fleet routers create NAME` and give it to the router as ROUTER_TOKEN";
  }
  return routerNeeds;
}

/** Route middleware: 401 in OpenAI's shape unless the caller holds a token of `scope`. */
export function requireScope(ctx: AuthContext, scope: Scope): MiddlewareHandler {
  if (scope === "router") {
    return async (c, next) => {
      const refusal = await routerRefusal(ctx, c.req.header("authorization"));
      if (refusal) throw new AppError("unauthorized", refusal);
      await next();
    };
  }
  return async (c, next) => {
    if (!isAuthorized(ctx.config, c.req.header("authorization"), scope)) {
      throw new AppError("unauthorized", "this endpoint needs Authorization: Bearer ADMIN_TOKEN");
    }
    await next();
  };
}

/**
 * The manager's `/metrics`: ADMIN_TOKEN or METRICS_TOKEN (a scrape-only token, so that a
 * Prometheus server need not hold the admin token); open when neither is set, as the admin
 * API is (the manager then listens on loopback only).
 */
export function managerMetricsAccess(
  config: Pick<ManagerConfig, "adminToken" | "metricsToken">,
): MetricsAccess {
  const tokens = [config.adminToken, config.metricsToken].filter(
    (token): token is string => token !== undefined,
  );
  if (tokens.length === 0) return { open: true };
  return {
    open: false,
    tokens,
    hint: "/metrics needs Authorization: Bearer <ADMIN_TOKEN or METRICS_TOKEN>",
  };
}
