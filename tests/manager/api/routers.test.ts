import { expect, test } from "bun:test";
import { sql } from "drizzle-orm";
import { eventually } from "../../../devkit/net.ts";
import { silentLogger } from "../../../kit/log.ts";
import { createApp } from "../../../manager/app.ts";
import { defaultConfig } from "../../../manager/env.ts";
import type {
  OpenAiError,
  RouterCreated,
  RouterInfo,
  RouterList,
  UsageRecord,
} from "../../../protocol/index.ts";
import { ADMIN, FLEET, manualClock, registration, type TestManager } from "../helpers.ts";
import { describeApi } from "./harness.ts";

/**
 * Router credentials: created by an admin and shown once, stored as SHA-256, listed with
 * their last use, revoked at once; and who may read routes and post usage with what.
 */

const usageRecord: UsageRecord = {
  ts: new Date().toISOString(),
  api_key_id: null,
  alias: "qwen",
  worker_id: "w1",
  status: 200,
  latency_ms: 12,
  ttft_ms: 5,
  prompt_tokens: 7,
  completion_tokens: 3,
  stream: false,
};

/** The three router endpoints, each with what it answers a caller it lets through. */
function routerCalls(t: TestManager, alias: string) {
  return [
    {
      name: "GET /v1/routes",
      ok: 200,
      call: (token: string | null) => t.call("GET", "/v1/routes", { token }),
    },
    {
      name: "GET /v1/routes/{alias}",
      ok: 200,
      call: (token: string | null) => t.call("GET", `/v1/routes/${alias}`, { token }),
    },
    {
      name: "POST /v1/usage",
      ok: 202,
      call: (token: string | null) =>
        t.call("POST", "/v1/usage", { token, body: { records: [usageRecord] } }),
    },
  ];
}

/** Status (and, when refused, the message) of each router endpoint for `token`. */
async function answers(t: TestManager, alias: string, token: string | null) {
  const out: Record<string, number | string> = {};
  for (const endpoint of routerCalls(t, alias)) {
    const response = await endpoint.call(token);
    if (response.status === 401) {
      const body = (await response.json()) as OpenAiError;
      expect(body.error.type).toBe("authentication_error");
      out[endpoint.name] = `401 ${body.error.message}`;
    } else {
      await response.body?.cancel();
      out[endpoint.name] = response.status === endpoint.ok ? "ok" : response.status;
    }
  }
  return out;
}

const allOk = { "GET /v1/routes": "ok", "GET /v1/routes/{alias}": "ok", "POST /v1/usage": "ok" };

/** Each endpoint refused with a message containing `text`. */
const allRefused = (text: string) =>
  Object.fromEntries(
    Object.keys(allOk).map((name) => [name, expect.stringMatching(new RegExp(`^401 .*${text}`))]),
  );

describeApi("manager API: router credentials", (api) => {
  /** A manager with one alias placed, so every router endpoint has something to answer. */
  async function withRoute(options: Parameters<typeof api.manager>[0] = {}) {
    const t = await api.manager(options);
    expect((await api.register(api.agent(), "w1")).status).toBe(200);
    expect((await api.model({ alias: "qwen" })).status).toBe(201);
    return t;
  }

  async function create(t: TestManager, name: string): Promise<RouterCreated> {
    const created = await t.json<RouterCreated>("POST", "/v1/routers", { body: { name } });
    expect(created.status).toBe(201);
    return created.body;
  }

  test("create: the token is shown once, and only its SHA-256 is stored", async () => {
    const t = await api.manager();
    const created = await create(t, "edge-eu");
    expect(created).toEqual({
      id: expect.stringMatching(/^rtr_/),
      name: "edge-eu",
      token: expect.stringMatching(/^fr_[A-Za-z0-9_-]{43}$/),
      prefix: created.token.slice(0, 11),
      created_at: expect.any(String),
      last_used_at: null,
      revoked_at: null,
    });
    const rows = await t.db.query<Record<string, unknown>>(sql`select * from routers`);
    expect(rows).toHaveLength(1);
    expect(JSON.stringify(rows)).not.toContain(created.token);
    expect(rows[0]?.token_hash).toBe(
      new Bun.CryptoHasher("sha256").update(created.token).digest("hex"),
    );
    const list = await t.json<RouterList>("GET", "/v1/routers");
    expect(JSON.stringify(list.body)).not.toContain(created.token);
    expect(list.body.routers).toEqual([
      {
        id: created.id,
        name: "edge-eu",
        prefix: created.prefix,
        created_at: created.created_at,
        last_used_at: null,
        revoked_at: null,
      },
    ]);
    // A second credential is a different secret.
    expect((await create(t, "edge-us")).token).not.toBe(created.token);
  });

  test("create: names are unique (revoked ones included) and checked; only an admin may create", async () => {
    const t = await api.manager();
    const first = await create(t, "router-1");
    const again = await t.json<OpenAiError>("POST", "/v1/routers", { body: { name: "router-1" } });
    expect(again.status).toBe(409);
    expect(again.body.error.param).toBe("name");
    expect((await t.call("DELETE", `/v1/routers/${first.id}`)).status).toBe(200);
    expect((await t.call("POST", "/v1/routers", { body: { name: "router-1" } })).status).toBe(409);
    for (const name of ["", "has space", "-dash-first", "x".repeat(65)]) {
      const bad = await t.json<OpenAiError>("POST", "/v1/routers", { body: { name } });
      expect({ name, status: bad.status, param: bad.body.error.param }).toEqual({
        name,
        status: 400,
        param: "name",
      });
    }
    expect((await t.call("POST", "/v1/routers", { body: {} })).status).toBe(400);
    for (const token of [null, FLEET, first.token, "wrong-token-123"]) {
      const refused = await t.call("POST", "/v1/routers", { token, body: { name: "sneaky" } });
      expect(refused.status).toBe(401);
      expect((await t.call("GET", "/v1/routers", { token })).status).toBe(401);
    }
    const list = await t.json<RouterList>("GET", "/v1/routers");
    expect(list.body.routers.map((r) => r.name)).toEqual(["router-1"]);
  });

  test("list: last_used_at moves when the credential is used, at most once a minute", async () => {
    const clock = manualClock();
    const t = await api.manager({ clock });
    const created = await create(t, "poller");
    const lastUsed = async () =>
      (await t.json<RouterList>("GET", "/v1/routers")).body.routers[0]?.last_used_at;
    expect(await lastUsed()).toBeNull();

    const before = clock.now().getTime();
    expect((await t.call("GET", "/v1/routes", { token: created.token })).status).toBe(200);
    const first = await lastUsed();
    expect(Date.parse(first ?? "")).toBeGreaterThanOrEqual(before - 1);
    expect(Date.parse(first ?? "")).toBeLessThanOrEqual(clock.now().getTime());

    // Polled every second: the row is not written again within the minute.
    clock.advance(30_000);
    expect((await t.call("GET", "/v1/routes", { token: created.token })).status).toBe(200);
    expect(await lastUsed()).toBe(first);

    clock.advance(31_000);
    const usage = await t.call("POST", "/v1/usage", {
      token: created.token,
      body: { records: [usageRecord] },
    });
    expect(usage.status).toBe(202);
    const second = await lastUsed();
    expect(Date.parse(second ?? "") - Date.parse(first ?? "")).toBeGreaterThanOrEqual(61_000);
  });

  test("revoke: the credential stops working at the very next request", async () => {
    const t = await withRoute();
    const created = await create(t, "doomed");
    const other = await create(t, "survivor");
    expect(await answers(t, "qwen", created.token)).toEqual(allOk);

    const revoked = await t.json<RouterInfo>("DELETE", `/v1/routers/${created.id}`);
    expect(revoked.status).toBe(200);
    expect(revoked.body).toEqual(
      expect.objectContaining({ id: created.id, name: "doomed", revoked_at: expect.any(String) }),
    );
    expect(await answers(t, "qwen", created.token)).toEqual(allRefused("revoked"));
    // Only that one: the other router keeps working.
    expect(await answers(t, "qwen", other.token)).toEqual(allOk);

    const twice = await t.json<OpenAiError>("DELETE", `/v1/routers/${created.id}`);
    expect(twice.status).toBe(409);
    expect(twice.body.error.message).toContain("already revoked");
    expect((await t.call("DELETE", "/v1/routers/rtr_missing")).status).toBe(404);
    for (const id of ["%00", "rtr_%00", "key_abc", "x".repeat(300)]) {
      const bad = await t.json<OpenAiError>("DELETE", `/v1/routers/${id}`);
      expect(bad.status).toBe(400);
      expect(bad.body.error).toMatchObject({ code: "invalid_request", param: "id" });
    }
    expect((await t.call("DELETE", `/v1/routers/${other.id}`, { token: FLEET })).status).toBe(401);
    expect((await t.call("DELETE", `/v1/routers/${other.id}`, { token: other.token })).status).toBe(
      401,
    );
    const list = await t.json<RouterList>("GET", "/v1/routers");
    expect(list.body.routers.map((r) => [r.name, r.revoked_at !== null])).toEqual([
      ["doomed", true],
      ["survivor", false],
    ]);
  });

  test("revoke through one manager: another on the same database refuses it within its version poll", async () => {
    const t = await withRoute();
    const created = await create(t, "shared");
    const other = createApp({
      db: t.db,
      config: defaultConfig({ adminToken: ADMIN, fleetToken: FLEET, routesPollMs: 50 }),
      log: silentLogger,
    });
    await other.start();
    try {
      const poll = () =>
        other.app.request("/v1/routes", { headers: { authorization: `Bearer ${created.token}` } });
      // Checked once, then answered from what the other manager remembers.
      expect((await poll()).status).toBe(200);
      expect((await poll()).status).toBe(200);
      expect((await t.call("DELETE", `/v1/routers/${created.id}`)).status).toBe(200);
      await eventually(async () => (await poll()).status === 401, {
        what: "the other manager to refuse the revoked credential",
        timeoutMs: 5000,
      });
    } finally {
      await other.close();
    }
  });

  test("routes and usage: a router credential or ADMIN_TOKEN; never FLEET_TOKEN, a revoked or a made-up one", async () => {
    const t = await withRoute();
    const live = await create(t, "live");
    const dead = await create(t, "dead");
    expect((await t.call("DELETE", `/v1/routers/${dead.id}`)).status).toBe(200);

    expect(await answers(t, "qwen", live.token)).toEqual(allOk);
    expect(await answers(t, "qwen", ADMIN)).toEqual(allOk);
    // The join token is refused with the way out.
    expect(await answers(t, "qwen", FLEET)).toEqual(allRefused("fleet routers create"));
    expect(await answers(t, "qwen", dead.token)).toEqual(allRefused("revoked"));
    for (const garbage of [
      null,
      "",
      "nonsense-token",
      `fr_${"A".repeat(43)}`,
      live.token.slice(0, -1),
      `${live.token}x`,
      live.prefix,
      new Bun.CryptoHasher("sha256").update(live.token).digest("hex"),
    ]) {
      expect({ garbage, answers: await answers(t, "qwen", garbage) }).toEqual({
        garbage,
        answers: allRefused("router credential"),
      });
    }
    // A router credential opens nothing but these three.
    expect((await t.call("GET", "/v1/workers", { token: live.token })).status).toBe(401);
    expect((await t.call("GET", "/v1/keys", { token: live.token })).status).toBe(401);
    expect((await t.call("GET", "/v1/models/qwen", { token: live.token })).status).toBe(401);
    const register = await t.call("POST", "/v1/workers/register", {
      token: live.token,
      body: registration("w-router", "http://127.0.0.1:9", []),
    });
    expect(register.status).toBe(401);
  });

  test("open mode (no tokens): routes and usage take no token, as before", async () => {
    const t = await withRoute({ config: { adminToken: undefined, fleetToken: undefined } });
    expect(await answers(t, "qwen", null)).toEqual(allOk);
    expect(await answers(t, "qwen", "whatever-anyone-sends")).toEqual(allOk);
  });

  test("with only one of the tokens set, routes and usage are not open", async () => {
    const cases = [
      { config: { fleetToken: undefined }, adminToken: ADMIN },
      { config: { adminToken: undefined }, adminToken: null },
    ];
    for (const { config, adminToken } of cases) {
      const t = await withRoute({ config });
      expect(await answers(t, "qwen", null)).toEqual(allRefused("router credential"));
      // With ADMIN_TOKEN unset the admin API is open (loopback only), so anyone there may
      // create the credential; with it set, only the admin.
      const created = await t.json<RouterCreated>("POST", "/v1/routers", {
        token: adminToken,
        body: { name: "only-one" },
      });
      expect(created.status).toBe(201);
      expect(await answers(t, "qwen", created.body.token)).toEqual(allOk);
    }
  });
});
