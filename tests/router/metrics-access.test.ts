import { describe, expect, test } from "bun:test";
import { silentLogger } from "../../kit/log.ts";
import type { OpenAiError } from "../../protocol/index.ts";
import { loadRouterEnv } from "../../router/env.ts";
import { createStandaloneRouter } from "../../router/standalone.ts";

/**
 * Who reads a standalone router's /metrics (docs/router.md "Metrics"): the router as its
 * entries build it from the environment, driven with `app.request`.
 */
function router(env: Record<string, string>, requireApiKey?: boolean) {
  return createStandaloneRouter({
    env: loadRouterEnv({ MANAGER_URL: "http://127.0.0.1:9", USAGE_SPOOL_MAX_MB: "0", ...env }),
    log: silentLogger,
    ...(requireApiKey === undefined ? {} : { requireApiKey }),
  });
}

async function scrape(app: ReturnType<typeof router>["app"], token?: string) {
  const response = await app.request("/metrics", {
    headers: token ? { authorization: `Bearer ${token}` } : {},
  });
  const text = await response.text();
  return {
    status: response.status,
    text,
    error: response.status === 200 ? undefined : (JSON.parse(text) as OpenAiError).error,
  };
}

describe("a standalone router's /metrics", () => {
  test("with METRICS_TOKEN it takes that token alone, not ROUTER_TOKEN", async () => {
    const { app } = router({ ROUTER_TOKEN: "fr_router-credential", METRICS_TOKEN: "scrape-me" });
    const refused = await scrape(app);
    expect(refused.status).toBe(401);
    expect(refused.error?.code).toBe("unauthorized");
    expect(refused.error?.message).toContain("METRICS_TOKEN");
    expect((await scrape(app, "fr_router-credential")).status).toBe(401);
    const read = await scrape(app, "scrape-me");
    expect(read.status).toBe(200);
    expect(read.text).toContain("# TYPE fleet_router_requests_total counter");
  });

  test("with ROUTER_TOKEN and no METRICS_TOKEN it is closed, and says what to set", async () => {
    const { app } = router({ ROUTER_TOKEN: "fr_router-credential" });
    for (const token of [undefined, "fr_router-credential", "anything"]) {
      const refused = await scrape(app, token);
      expect(refused.status).toBe(401);
      expect(refused.error?.message).toContain("set METRICS_TOKEN on this router");
    }
  });

  test("a router that requires API keys (beyond loopback) is closed without METRICS_TOKEN", async () => {
    expect((await scrape(router({ HOST: "0.0.0.0" }).app)).status).toBe(401);
    expect((await scrape(router({}, true).app)).status).toBe(401);
  });

  test("an open router on loopback (no token at all) answers anyone", async () => {
    const read = await scrape(router({}).app);
    expect(read.status).toBe(200);
    expect(read.text).toContain("fleet_router_routes_age_seconds");
  });
});
