import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { eq, sql } from "drizzle-orm";
import { schema } from "../../db/index.ts";
import { dbTargets } from "../../devkit/db.ts";
import { consolePaths } from "../../manager/console/routes.tsx";
import type { ModelInfo, RouteSnapshot, WorkerCredentials } from "../../protocol/index.ts";
import {
  ADMIN,
  gpu,
  registration,
  type StubAgent,
  stubAgent,
  type TestManager,
  testManager,
} from "./helpers.ts";

/** A browser's cookies for one manager: what Set-Cookie gave, sent back as Cookie. */
class Browser {
  readonly cookies = new Map<string, string>();
  constructor(private readonly t: TestManager) {}

  async request(
    path: string,
    init: { method?: string; form?: Record<string, string>; headers?: Record<string, string> } = {},
  ) {
    const headers: Record<string, string> = { ...init.headers };
    if (this.cookies.size > 0) {
      headers.cookie = [...this.cookies].map(([k, v]) => `${k}=${v}`).join("; ");
    }
    let body: string | undefined;
    if (init.form) {
      headers["content-type"] = "application/x-www-form-urlencoded";
      body = new URLSearchParams(init.form).toString();
    }
    const response = await this.t.manager.app.request(path, {
      method: init.method ?? (init.form ? "POST" : "GET"),
      headers,
      body,
    });
    for (const line of response.headers.getSetCookie()) {
      const [pair = ""] = line.split(";");
      const at = pair.indexOf("=");
      const name = pair.slice(0, at);
      const value = pair.slice(at + 1);
      if (value === "" || /max-age=0/i.test(line)) this.cookies.delete(name);
      else this.cookies.set(name, value);
    }
    return response;
  }

  /** The CSRF value the last page's forms carry. */
  static csrf(html: string): string {
    const match = /name="csrf" value="([^"]+)"/.exec(html);
    if (!match?.[1]) throw new Error("no csrf field on the page");
    return match[1];
  }

  async signIn(token = ADMIN) {
    const page = await (await this.request("/login")).text();
    return this.request("/login", { form: { csrf: Browser.csrf(page), token, next: "/" } });
  }
}

const agents: StubAgent[] = [];
afterAll(() => {
  for (const a of agents) a.stop();
});

describe("fleet console", () => {
  let t: TestManager;
  let credentials: WorkerCredentials | undefined;
  beforeAll(async () => {
    t = await testManager();
    const a = stubAgent();
    agents.push(a);
    await t.register(
      registration("gpu-host-1", a.url, [gpu(0, 81_920, 40_960), gpu(1)], {
        agent_version: "9.9.9-test",
        public_worker_url: "http://127.0.0.2:9",
      }),
      a,
    );
    credentials = t.credentials.get("gpu-host-1");
    const created = await t.json("POST", "/v1/models/register", {
      body: { alias: "chat", model_name: "org/chat-model", worker_id: "gpu-host-1", gpu_ids: [1] },
    });
    expect(created.status).toBe(201);
  });
  afterAll(async () => {
    await t.close();
  });

  test("a browser without a session is sent to sign in; the form carries a CSRF field", async () => {
    const browser = new Browser(t);
    const page = await browser.request("/models");
    expect(page.status).toBe(303);
    expect(page.headers.get("location")).toBe("/login?next=%2Fmodels");
    const login = await browser.request("/login?next=%2Fmodels");
    expect(login.status).toBe(200);
    const html = await login.text();
    expect(html).toContain('name="token"');
    expect(html).toContain('action="/login"');
    expect(Browser.csrf(html)).toBe(browser.cookies.get("fleet_csrf") ?? "?");
    expect(html).not.toContain("gpu-host-1");
  });

  test("sign-in: wrong token refused, no CSRF refused, right token sets an HttpOnly SameSite=Strict session that is not the token", async () => {
    const browser = new Browser(t);
    expect((await browser.signIn("not-the-token")).status).toBe(401);
    expect(browser.cookies.has("fleet_session")).toBe(false);
    const forged = await browser.request("/login", {
      form: { token: ADMIN, csrf: "x".repeat(32) },
    });
    expect(forged.status).toBe(403);
    expect(browser.cookies.has("fleet_session")).toBe(false);

    const ok = await browser.signIn();
    expect(ok.status).toBe(303);
    expect(ok.headers.get("location")).toBe("/");
    const line = ok.headers.getSetCookie().find((c) => c.startsWith("fleet_session=")) ?? "";
    expect(line).toContain("HttpOnly");
    expect(line).toContain("SameSite=Strict");
    expect(line).not.toContain(ADMIN);
    expect(browser.cookies.get("fleet_session")?.length).toBeGreaterThanOrEqual(40);
    const fleet = await browser.request("/");
    expect(fleet.status).toBe(200);
    expect(await fleet.text()).toContain("gpu-host-1");
  });

  test("sign-out ends the session on the server, not only in the browser", async () => {
    const browser = new Browser(t);
    await browser.signIn();
    const session = browser.cookies.get("fleet_session") ?? "";
    const csrf = Browser.csrf(await (await browser.request("/")).text());
    const out = await browser.request("/logout", { form: { csrf } });
    expect(out.status).toBe(303);
    expect(browser.cookies.has("fleet_session")).toBe(false);
    browser.cookies.set("fleet_session", session); // a copy kept by someone else
    expect((await browser.request("/")).status).toBe(303);
  });

  test("the Fleet page shows the worker, its version, paths and GPU memory", async () => {
    const reply = await t.call("GET", "/");
    expect(reply.status).toBe(200);
    expect(reply.headers.get("content-type")).toContain("text/html");
    const html = await reply.text();
    expect(html).toStartWith("<!doctype html>");
    expect(html).toContain("gpu-host-1");
    expect(html).toContain("9.9.9-test");
    expect(html).toContain("http://127.0.0.2:9"); // the public path
    expect(html).toContain("GPU 0");
    expect(html).toContain("GPU 0 NVIDIA A100-SXM4-80GB: used 40.0 GiB, claimed 0.0 GiB");
    expect(html).toContain("used 0.0 GiB, claimed 72.0 GiB"); // 0.9 of 80 GiB claimed by chat
    expect(html).toContain('aria-current="page"');
  });

  test("the Models, Routes and Events pages show the registered model", async () => {
    const models = await (await t.call("GET", "/models")).text();
    expect(models).toContain("chat");
    expect(models).toContain("org/chat-model");
    expect(models).toMatch(/badge s-(starting|pending|ready)/);
    const routes = await (await t.call("GET", "/routes")).text();
    expect(routes).toContain("Snapshot version");
    const events = await (await t.call("GET", "/events?model=chat")).text();
    expect(events).toContain("model.registered");
    const otherWorker = await (await t.call("GET", "/events?worker=nobody")).text();
    expect(otherWorker).toContain("No event.");
  });

  test("the live refresh gets the page's live sections without the frame", async () => {
    const reply = await t.call("GET", "/models", { headers: { "x-console-live": "1" } });
    const html = await reply.text();
    expect(html).toContain('id="models" data-live');
    expect(html).not.toContain("<nav");
  });

  test("no page shows a stored secret", async () => {
    const [keyHash] = await t.db.query<{ key_hash: string }>(
      sql`select key_hash from api_keys limit 1`,
    );
    const created = await t.json<{ key: string }>("POST", "/v1/keys", { body: { name: "k" } });
    const [row] = await t.db.query<{ key_hash: string }>(
      sql`select key_hash from api_keys where name = 'k'`,
    );
    const secrets = [
      ADMIN,
      created.body.key,
      row?.key_hash ?? "?",
      keyHash?.key_hash ?? ADMIN,
      credentials?.worker_credential ?? "?",
      credentials?.agent_token ?? "?",
    ];
    for (const path of ["/", "/models", "/routes", "/events", "/keys"]) {
      const html = await (await t.call("GET", path)).text();
      for (const secret of secrets)
        expect({ path, leaked: html.includes(secret) }).toEqual({ path, leaked: false });
    }
  });

  test("pages load only the manager's own assets, under a same-origin CSP", async () => {
    const reply = await t.call("GET", "/");
    expect(reply.headers.get("content-security-policy")).toContain("default-src 'self'");
    const html = await reply.text();
    const references = [...html.matchAll(/\b(?:src|href)="([^"]+)"/g)].map((m) => m[1] ?? "");
    expect(references.length).toBeGreaterThanOrEqual(3);
    for (const reference of references) {
      expect(new URL(reference, "http://manager.invalid/").origin).toBe("http://manager.invalid");
    }
    const css = await t.call("GET", "/console/assets/console.css", { token: null });
    expect(css.headers.get("content-type")).toContain("text/css");
    expect(await css.text()).toContain("prefers-color-scheme: dark");
    const js = await t.call("GET", "/console/assets/console.js", { token: null });
    expect(js.headers.get("content-type")).toContain("text/javascript");
    expect(await js.text()).toContain("X-Console-Live");
    expect((await t.call("GET", "/console/assets/nope.js", { token: null })).status).toBe(404);
  });

  test("every console path is a page or a form: none answers JSON, so /openapi.json leaves them out", async () => {
    for (const path of consolePaths) {
      const concrete = path
        .replace(":alias", "chat")
        .replace(":id", "x")
        .replace(":file", "console.css");
      const method =
        path.endsWith("/delete") ||
        path.endsWith("/revoke") ||
        path.endsWith("/restart") ||
        path === "/logout"
          ? "POST"
          : "GET";
      const reply = await t.call(method, concrete, { token: null });
      expect({ path, json: (reply.headers.get("content-type") ?? "").includes("json") }).toEqual({
        path,
        json: false,
      });
    }
  });
});

describe("fleet console forms", () => {
  let t: TestManager;
  let browser: Browser;
  let csrf: string;
  let a: StubAgent;
  beforeAll(async () => {
    t = await testManager();
    a = stubAgent();
    agents.push(a);
    await t.register(registration("w1", a.url, [gpu(0)]), a);
    browser = new Browser(t);
    await browser.signIn();
    csrf = Browser.csrf(await (await browser.request("/models")).text());
  });
  afterAll(async () => {
    await t.close();
  });

  test("register: the API's validation error is shown next to the form, which keeps its values", async () => {
    const reply = await browser.request("/models", {
      form: { csrf, alias: "bad alias!", model_name: "org/m", replicas: "1" },
    });
    expect(reply.status).toBe(400);
    const html = await reply.text();
    expect(html).toContain('role="alert"');
    expect(html).toMatch(/alias: [^<]+/);
    expect(html).toContain('value="org/m"');
    const notNumber = await browser.request("/models", {
      form: { csrf, alias: "ok", model_name: "org/m", replicas: "two" },
    });
    expect(notNumber.status).toBe(400);
    expect(await notNumber.text()).toContain("replicas");
    expect((await t.json("GET", "/v1/models/ok")).status).toBe(404);
  });

  test("register, then delete, through the forms", async () => {
    const reply = await browser.request("/models", {
      form: {
        csrf,
        alias: "chat",
        model_name: "org/chat",
        gpu_memory_utilization: "0.5",
        extra_args: "--enforce-eager\n",
        routing: "least_loaded",
      },
    });
    expect(reply.status).toBe(303);
    const model = await t.json<{
      gpu_memory_utilization: number;
      extra_args: string[];
      routing: string;
    }>("GET", "/v1/models/chat");
    expect(model.status).toBe(200);
    expect(model.body.gpu_memory_utilization).toBe(0.5);
    expect(model.body.extra_args).toEqual(["--enforce-eager"]);
    expect(model.body.routing).toBe("least_loaded");
    expect(await (await browser.request("/routes")).text()).toContain("<td>least loaded</td>");
    expect(await (await browser.request("/models")).text()).toContain('aria-label="model chat"');
    const taken = await browser.request("/models", {
      form: { csrf, alias: "chat", model_name: "org/chat" },
    });
    expect(taken.status).toBe(409);
    const deleted = await browser.request("/models/chat/delete", { form: { csrf } });
    expect(deleted.status).toBe(303);
    expect((await t.json("GET", "/v1/models/chat")).status).toBe(404);
  });

  test("restart: the button posts with the CSRF field, the page says so, and the route is unserved", async () => {
    const created = await t.json<ModelInfo>("POST", "/v1/models/register", {
      body: { alias: "again", model_name: "org/m", gpu_memory_utilization: 0.3 },
    });
    expect(created.status).toBe(201);
    const id = created.body.instances[0]?.id ?? "";
    a.markReady("again");
    await t.heartbeat("w1", {
      gpu_info: { gpus: [gpu(0)], warning: null },
      instances: a.reports(),
    });
    const page = await (await browser.request("/models")).text();
    const action = `/models/again/instances/${id}/restart`;
    expect(page).toContain(`action="${action}"`);
    expect(page).toContain('aria-label="Restart again on w1"');

    // Without the CSRF field (another site's form): refused, the agent never asked.
    const forged = await browser.request(action, { form: {} });
    expect(forged.status).toBe(403);
    expect(a.restarts).toEqual([]);

    const reply = await browser.request(action, { form: { csrf } });
    expect(reply.status).toBe(303);
    const location = reply.headers.get("location") ?? "";
    expect(location).toBe(`/models?restarted=${id}`);
    expect(a.restarts).toEqual(["again"]);
    const after = await (await browser.request(location)).text();
    expect(after).toContain('role="status"');
    expect(after).toContain(
      "Restarting again on w1: its route is unserved until the engine is ready again",
    );
    // No longer ready: no button; the route is out of the snapshot.
    expect(after).not.toContain(`action="${action}"`);
    const snapshot = await t.json<RouteSnapshot>("GET", "/v1/routes");
    expect(snapshot.body.routes.find((r) => r.alias === "again")?.ready).toBe(false);
    const [event] = await t.db.db
      .select()
      .from(schema.events)
      .where(eq(schema.events.kind, "instance.restarted"));
    expect(event?.detail).toMatchObject({ requested_by: "console (signed-in session)" });

    // A second press while it stops: the API's reason, shown as an alert.
    const twice = await browser.request(action, { form: { csrf } });
    expect(twice.status).toBe(409);
    const refused = await twice.text();
    expect(refused).toContain('role="alert"');
    expect(refused).toContain("Restart refused: instance");
    expect(refused).toContain("is stopping: a restart (or a stop) is already under way");
    await t.call("DELETE", "/v1/models/again");
  });

  test("the Routes page shows each route's engine load from the last heartbeat", async () => {
    const created = await t.json("POST", "/v1/models/register", {
      body: { alias: "loaded", model_name: "org/m", gpu_memory_utilization: 0.3 },
    });
    expect(created.status).toBe(201);
    a.markReady("loaded");
    const beat = await t.heartbeat("w1", {
      gpu_info: { gpus: [gpu(0)], warning: null },
      instances: a
        .reports()
        .map((report) => ({ ...report, load: { running: 3, waiting: 1, kv: 0.42, hit: 0.8 } })),
    });
    expect(beat.status).toBe(200);
    const html = await (await browser.request("/routes")).text();
    expect(html).toContain("3 · 1 · 42% · 80%");
    await t.call("DELETE", "/v1/models/loaded");
  });

  test("a form without the CSRF field does nothing, even signed in", async () => {
    const reply = await browser.request("/models", {
      form: { alias: "sneaky", model_name: "org/m" },
    });
    expect(reply.status).toBe(403);
    expect((await t.json("GET", "/v1/models/sneaky")).status).toBe(404);
  });

  test("a new key is shown once; revoking it marks it revoked", async () => {
    const created = await browser.request("/keys", { form: { csrf, name: "team-a" } });
    expect(created.status).toBe(201);
    expect(created.headers.get("cache-control")).toBe("no-store");
    const html = await created.text();
    const key = /<code id="new-key">([^<]+)<\/code>/.exec(html)?.[1] ?? "";
    expect(key).toStartWith("sk-fleet-");
    const list = await t.json<{ keys: { id: string; name: string; revoked_at: string | null }[] }>(
      "GET",
      "/v1/keys",
    );
    const id = list.body.keys.find((k) => k.name === "team-a")?.id ?? "";
    const later = await (await browser.request("/keys")).text();
    expect(later).toContain("team-a");
    expect(later).not.toContain(key);
    const revoked = await browser.request(`/keys/${id}/revoke`, { form: { csrf } });
    expect(revoked.status).toBe(303);
    expect(await (await browser.request("/keys")).text()).toContain("s-revoked");
    const after = await t.json<{ keys: { name: string; revoked_at: string | null }[] }>(
      "GET",
      "/v1/keys",
    );
    expect(after.body.keys.find((k) => k.name === "team-a")?.revoked_at).not.toBeNull();
  });

  test("a script with the admin token posts without a CSRF field", async () => {
    const reply = await t.manager.app.request("/keys", {
      method: "POST",
      headers: {
        authorization: `Bearer ${ADMIN}`,
        "content-type": "application/x-www-form-urlencoded",
      },
      body: "name=from-a-script",
    });
    expect(reply.status).toBe(201);
    expect(await reply.text()).toContain("from-a-script");
  });
});

for (const target of dbTargets) {
  describe(`fleet console traffic (${target})`, () => {
    test("per model and per key from request_logs: counts, token rates, percentiles, errors, charts", async () => {
      const t = await testManager({ target });
      try {
        const created = await t.json<{ id: string; key: string }>("POST", "/v1/keys", {
          body: { name: "team-a" },
        });
        const now = Date.now();
        const row = (alias: string, minutesAgo: number, latencyMs: number, status = 200) => ({
          ts: new Date(now - minutesAgo * 60_000),
          apiKeyId: alias === "chat" ? created.body.id : null,
          alias,
          workerId: "w1",
          status,
          latencyMs,
          ttftMs: Math.round(latencyMs / 4),
          promptTokens: 10,
          completionTokens: 20,
        });
        await t.db.db.insert(schema.requestLogs).values([
          // chat: 100 requests over the hour, latencies 1..100 ms, 4 of them errors.
          ...Array.from({ length: 100 }, (_, i) =>
            row("chat", (i % 50) + 1, i + 1, i < 4 ? 502 : 200),
          ),
          row("embed", 30, 7),
          row("old", 120, 5), // outside the last hour, inside the last day
        ]);
        const hour = await (await t.call("GET", "/traffic")).text();
        const chat = /<tr data-alias="chat">(.*?)<\/tr>/s.exec(hour)?.[1] ?? "";
        expect(chat).toContain('<td class="requests">100</td>');
        expect(chat).toContain("51 ms · 99 ms"); // latencies 1..100: p50 50.5, p99 99.01
        expect(chat).toContain("4.0%");
        expect(chat).toContain("0.28 · 0.56"); // 1000 and 2000 tokens over 3600 s
        expect(chat.match(/<rect class="bar"/g)?.length).toBe(50);
        expect(hour).toContain('data-alias="embed"');
        expect(hour).not.toContain('data-alias="old"');
        const key = /<tr data-key="team-a">(.*?)<\/tr>/s.exec(hour)?.[1] ?? "";
        expect(key).toContain('<td class="requests">100</td>');
        expect(hour).toContain('data-key="(no key)"');
        expect(hour).not.toContain(created.body.key);
        const keys = await (await t.call("GET", "/keys")).text();
        const keyRow = /<tr data-key="team-a">(.*?)<\/tr>/s.exec(keys)?.[1] ?? "";
        expect(keyRow).toContain('<td class="requests">100</td>');
        expect(keyRow).toContain("<td>3000</td>"); // 100 × (10 + 20) tokens
        const day = await (await t.call("GET", "/traffic?window=24h")).text();
        expect(day).toContain('data-alias="old"');
      } finally {
        await t.close();
      }
    });
  });
}

describe("fleet console on loopback without ADMIN_TOKEN", () => {
  test("pages are open, as the API is, and forms still need the CSRF field", async () => {
    const t = await testManager({ config: { adminToken: undefined } });
    try {
      const browser = new Browser(t);
      const page = await browser.request("/keys");
      expect(page.status).toBe(200);
      const csrf = Browser.csrf(await page.text());
      expect(
        (await browser.request("/keys", { form: { name: "x", csrf: "forged-value-forged-value" } }))
          .status,
      ).toBe(403);
      expect((await browser.request("/keys", { form: { name: "x", csrf } })).status).toBe(201);
    } finally {
      await t.close();
    }
  });
});
