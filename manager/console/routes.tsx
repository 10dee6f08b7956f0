import { and, asc, desc, eq, inArray } from "drizzle-orm";
import type { Context, MiddlewareHandler } from "hono";
import { Hono } from "hono";
import { bodyLimit } from "hono/body-limit";
import { deleteCookie, getCookie } from "hono/cookie";
import type { Child } from "hono/jsx";
import { schema } from "../../db/index.ts";
import { constantTimeEqual } from "../../kit/crypto.ts";
import {
  type ApiKeyCreated,
  type ApiKeyList,
  claimingInstanceStatuses,
  type InstanceRecord,
  type ModelInfo,
  type OpenAiError,
  type WorkerList,
} from "../../protocol/index.ts";
import type { ManagerContext } from "../context.ts";
import { loadModelInfo } from "../services/models.ts";
import { consoleCss, consoleJs } from "./assets.ts";
import {
  type ConsoleAccess,
  ConsoleSessions,
  consoleAccess,
  csrfToken,
  csrfValid,
  sessionCookie,
  startSession,
} from "./session.ts";
import { loadKeyUsage, loadTraffic, type TrafficWindow, trafficWindows } from "./traffic.ts";
import { TrafficView } from "./traffic-view.tsx";
import {
  type Claims,
  EventsView,
  FleetView,
  KeysView,
  Layout,
  LoginPage,
  ModelsLive,
  type Notice,
  NoticeView,
  type RegisterForm,
  RegisterModelForm,
  RoutesView,
  views,
} from "./views.tsx";

/**
 * Every path the console answers. They are HTML pages and form posts for people, not API:
 * /openapi.json leaves them out, and its completeness test excludes exactly these.
 */
export const consolePaths = [
  ...views.map((view) => view.path),
  "/login",
  "/logout",
  "/models/:alias/delete",
  "/models/:alias/instances/:id/restart",
  "/keys/:id/revoke",
  "/console/assets/:file",
] as const;

type Vars = { access: ConsoleAccess };

/** Calls the manager's own API in-process, as the admin (the console's forms and lists). */
export type AdminApi = (method: string, path: string, body?: unknown) => Promise<Response>;

/**
 * The fleet console (docs/console.md): server-rendered pages over the same services and
 * API as `fleet`, a small script that refreshes their live sections every 2 s, and forms
 * that post to the API's own validation.
 */
export function consoleRoutes(ctx: ManagerContext, api: AdminApi): Hono<{ Variables: Vars }> {
  const app = new Hono<{ Variables: Vars }>();
  const sessions = new ConsoleSessions(() => ctx.clock.now().getTime());

  // The page may load and fetch only from the manager; nothing runs inline.
  const securityHeaders = {
    "content-security-policy":
      "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "cache-control": "no-store",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
  };
  const html = (
    c: Context<{ Variables: Vars }>,
    node: Child,
    status: 200 | 201 | 400 | 401 | 403 | 404 | 409 | 502 = 200,
  ) => c.html(`<!doctype html>${String(node)}`, status, securityHeaders);

  app.get("/console/assets/:file", (c) => {
    const file = c.req.param("file");
    const body =
      file === "console.css" ? consoleCss : file === "console.js" ? consoleJs : undefined;
    if (!body) return c.text("not found", 404);
    const type = file.endsWith(".css")
      ? "text/css; charset=utf-8"
      : "text/javascript; charset=utf-8";
    return c.body(body, 200, { "content-type": type, "cache-control": "no-cache" });
  });

  const forms = bodyLimit({ maxSize: 64 * 1024, onError: (c) => c.text("form too large", 413) });
  app.use("/login", forms);
  app.use("/logout", forms);
  app.use("/models", forms);
  app.use("/models/*", forms);
  app.use("/keys", forms);
  app.use("/keys/*", forms);

  app.get("/login", (c) => {
    const next = safeNext(c.req.query("next"));
    if (consoleAccess(c, ctx.config, sessions)) return c.redirect(next, 303);
    return html(c, <LoginPage csrf={csrfToken(c)} next={next} />);
  });

  app.post("/login", async (c) => {
    const form = await c.req.parseBody();
    const next = safeNext(form.next);
    if (!csrfValid(c, form.csrf)) {
      return html(
        c,
        <LoginPage csrf={csrfToken(c)} next={next} error="The form expired: sign in again." />,
        403,
      );
    }
    const admin = ctx.config.adminToken;
    if (!admin) return c.redirect(next, 303);
    const token = typeof form.token === "string" ? form.token.trim() : "";
    if (token === "" || !constantTimeEqual(token, admin)) {
      ctx.log.warn("console sign-in refused", { reason: "wrong admin token" });
      return html(
        c,
        <LoginPage
          csrf={csrfToken(c)}
          next={next}
          error="That is not the manager's ADMIN_TOKEN."
        />,
        401,
      );
    }
    sessions.end(getCookie(c, sessionCookie));
    startSession(c, sessions);
    ctx.log.info("console sign-in");
    return c.redirect(next, 303);
  });

  app.post("/logout", async (c) => {
    const form = await c.req.parseBody();
    if (!csrfValid(c, form.csrf)) return c.text("the form expired: reload the page", 403);
    sessions.end(getCookie(c, sessionCookie));
    deleteCookie(c, sessionCookie, { path: "/" });
    return c.redirect("/login", 303);
  });

  // The pages and forms need the console's access: open, Bearer admin token, or a session.
  // Guarded path by path: a wildcard here would sit in front of the API too.
  const guard: MiddlewareHandler<{ Variables: Vars }> = async (c, next) => {
    const access = consoleAccess(c, ctx.config, sessions);
    if (!access) {
      if (c.req.method === "GET") {
        return c.redirect(`/login?next=${encodeURIComponent(c.req.path)}`, 303);
      }
      return c.text("sign in first: /login", 401);
    }
    c.set("access", access);
    // A Bearer caller is a script: a browser never adds that header on its own, so a
    // cross-site form cannot forge it, and its posts need no CSRF field.
    if (c.req.method === "POST" && access !== "bearer") {
      const form = await c.req.parseBody();
      if (!csrfValid(c, form.csrf)) return c.text("the form expired: reload the page", 403);
    }
    await next();
  };
  for (const path of [
    "/",
    "/models",
    "/models/*",
    "/routes",
    "/traffic",
    "/events",
    "/keys",
    "/keys/*",
  ]) {
    app.use(path, guard);
  }

  /** The whole page, or only its body when the live script asks (`X-Console-Live: 1`). */
  const page = (
    c: Context<{ Variables: Vars }>,
    view: { title: string; path: string },
    body: Child,
    status: 200 | 201 | 400 | 404 | 409 | 502 = 200,
  ) => {
    if (c.req.header("x-console-live") === "1") return html(c, <div>{body}</div>, status);
    return html(
      c,
      <Layout
        title={view.title}
        path={view.path}
        csrf={csrfToken(c)}
        signedIn={c.get("access") === "session"}
      >
        {body}
      </Layout>,
      status,
    );
  };
  const view = (path: string) => views.find((v) => v.path === path) ?? views[0];

  const apiJson = async <T,>(method: string, path: string, body?: unknown) => {
    const response = await api(method, path, body);
    const parsed = (await response.json()) as T | OpenAiError;
    return { status: response.status, ok: response.ok, body: parsed };
  };

  app.get("/", async (c) => {
    const reply = await apiJson<WorkerList>("GET", "/v1/workers");
    const workers = reply.ok ? (reply.body as WorkerList).workers : [];
    const claimRows = await ctx.db
      .select({
        workerId: schema.instances.workerId,
        gpuIds: schema.instances.gpuIds,
        share: schema.instances.gpuMemoryUtilization,
      })
      .from(schema.instances)
      .where(inArray(schema.instances.status, [...claimingInstanceStatuses]));
    const claims: Claims = new Map();
    for (const row of claimRows) {
      const byGpu = claims.get(row.workerId) ?? new Map<number, number>();
      for (const gpu of row.gpuIds) byGpu.set(gpu, (byGpu.get(gpu) ?? 0) + row.share);
      claims.set(row.workerId, byGpu);
    }
    return page(c, view("/"), <FleetView workers={workers} claims={claims} />);
  });

  const modelsPage = async (
    c: Context<{ Variables: Vars }>,
    form: RegisterForm = {},
    error?: string,
    status: 200 | 400 | 404 | 409 | 502 = 200,
    notice?: Notice,
  ) => {
    const aliases = await ctx.db
      .select({ alias: schema.models.alias })
      .from(schema.models)
      .orderBy(asc(schema.models.alias));
    const models = (await Promise.all(aliases.map((m) => loadModelInfo(ctx, m.alias)))).filter(
      (m): m is ModelInfo => m !== undefined,
    );
    const csrf = csrfToken(c);
    const restarted = c.req.query("restarted");
    const instance = restarted
      ? models.flatMap((m) => m.instances).find((i) => i.id === restarted)
      : undefined;
    const shown: Notice | undefined =
      notice ??
      (instance
        ? {
            kind: "ok",
            text: `Restarting ${instance.alias} on ${instance.worker_id}: its route is unserved until the engine is ready again; its progress shows below.`,
          }
        : undefined);
    return page(
      c,
      view("/models"),
      <>
        {shown ? <NoticeView notice={shown} /> : null}
        <ModelsLive models={models} csrf={csrf} />
        <RegisterModelForm csrf={csrf} form={form} error={error} />
      </>,
      status,
    );
  };

  app.get("/models", (c) => modelsPage(c));

  app.post("/models", async (c) => {
    const form = stringFields(await c.req.parseBody());
    const reply = await apiJson<ModelInfo>("POST", "/v1/models/register", registration(form));
    if (reply.ok) {
      ctx.log.info("console registered a model", { alias: form.alias ?? "" });
      return c.redirect("/models", 303);
    }
    return modelsPage(c, form, errorText(reply.body), reply.status === 409 ? 409 : 400);
  });

  app.post("/models/:alias/delete", async (c) => {
    const alias = c.req.param("alias");
    const reply = await apiJson("DELETE", `/v1/models/${encodeURIComponent(alias)}`);
    if (!reply.ok) return modelsPage(c, {}, errorText(reply.body), 400);
    return c.redirect("/models", 303);
  });

  app.post("/models/:alias/instances/:id/restart", async (c) => {
    const id = c.req.param("id");
    const access = c.get("access");
    const reply = await apiJson<InstanceRecord>(
      "POST",
      `/v1/instances/${encodeURIComponent(id)}/restart`,
      { requested_by: `console (${access === "session" ? "signed-in session" : access})` },
    );
    if (reply.ok) {
      return c.redirect(`/models?restarted=${encodeURIComponent(id)}`, 303);
    }
    const status =
      reply.status === 404 || reply.status === 409 || reply.status === 502 ? reply.status : 400;
    return modelsPage(c, {}, undefined, status, {
      kind: "error",
      text: `Restart refused: ${errorText(reply.body)}`,
    });
  });

  app.get("/routes", async (c) => {
    const snapshot = ctx.routes.current();
    const workers = await ctx.db
      .select({ url: schema.workers.publicWorkerUrl })
      .from(schema.workers);
    const publicUrls = new Set(workers.flatMap((w) => (w.url ? [w.url] : [])));
    return page(
      c,
      view("/routes"),
      <RoutesView
        routes={snapshot?.routes ?? []}
        publicUrls={publicUrls}
        loads={
          new Map(
            ctx.loads.list(ctx.clock.now().getTime()).map((l) => [`${l.worker_id} ${l.alias}`, l]),
          )
        }
        version={snapshot?.version ?? null}
      />,
    );
  });

  app.get("/traffic", async (c) => {
    const asked = c.req.query("window") ?? "1h";
    const window: TrafficWindow = asked in trafficWindows ? (asked as TrafficWindow) : "1h";
    const traffic = await loadTraffic(ctx.fleetDb, window, ctx.clock.now());
    return page(c, view("/traffic"), <TrafficView traffic={traffic} />);
  });

  app.get("/events", async (c) => {
    const worker = c.req.query("worker") ?? "";
    const alias = c.req.query("model") ?? "";
    const [events, workers, aliases] = await Promise.all([
      ctx.db
        .select()
        .from(schema.events)
        .where(
          and(
            worker ? eq(schema.events.workerId, worker) : undefined,
            alias ? eq(schema.events.alias, alias) : undefined,
          ),
        )
        .orderBy(desc(schema.events.ts), desc(schema.events.id))
        .limit(200),
      ctx.db.selectDistinct({ v: schema.events.workerId }).from(schema.events),
      ctx.db.selectDistinct({ v: schema.events.alias }).from(schema.events),
    ]);
    const names = (rows: { v: string | null }[]) => rows.flatMap((r) => (r.v ? [r.v] : [])).sort();
    return page(
      c,
      view("/events"),
      <EventsView
        events={events}
        workers={names(workers)}
        aliases={names(aliases)}
        worker={worker}
        alias={alias}
      />,
    );
  });

  const keysPage = async (
    c: Context<{ Variables: Vars }>,
    extra: { created?: { name: string; key: string }; error?: string } = {},
    status: 200 | 201 | 400 = 200,
  ) => {
    const reply = await apiJson<ApiKeyList>("GET", "/v1/keys");
    const keys = reply.ok ? (reply.body as ApiKeyList).keys : [];
    const usage = await loadKeyUsage(ctx.fleetDb, ctx.clock.now());
    return page(
      c,
      view("/keys"),
      <KeysView keys={keys} usage={usage} csrf={csrfToken(c)} {...extra} />,
      status,
    );
  };

  app.get("/keys", (c) => keysPage(c));

  app.post("/keys", async (c) => {
    const form = stringFields(await c.req.parseBody());
    const name = form.name?.trim();
    const reply = await apiJson<ApiKeyCreated>("POST", "/v1/keys", name ? { name } : {});
    if (!reply.ok) return keysPage(c, { error: errorText(reply.body) }, 400);
    const created = reply.body as ApiKeyCreated;
    ctx.log.info("console created an API key", { id: created.id });
    // Rendered in this reply, not after a redirect: the key exists nowhere else.
    return keysPage(c, { created: { name: created.name, key: created.key } }, 201);
  });

  app.post("/keys/:id/revoke", async (c) => {
    const reply = await apiJson("DELETE", `/v1/keys/${encodeURIComponent(c.req.param("id"))}`);
    if (!reply.ok) return keysPage(c, { error: errorText(reply.body) }, 400);
    return c.redirect("/keys", 303);
  });

  return app;
}

/** Where to go after sign-in: a path of this manager only (never `//host` or a URL). */
function safeNext(value: unknown): string {
  if (typeof value !== "string" || !value.startsWith("/") || value.startsWith("//")) return "/";
  if (value.includes("\\")) return "/";
  return value;
}

function stringFields(body: Record<string, unknown>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [key, value] of Object.entries(body)) {
    if (typeof value === "string" && key !== "csrf") out[key] = value;
  }
  return out;
}

/**
 * The register form as the API's JSON: empty fields left out (the API's defaults apply),
 * numbers as numbers when they read as one (else as typed, so the API's error names them).
 */
function registration(form: RegisterForm): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  const numeric = new Set([
    "replicas",
    "gpu_memory_utilization",
    "tensor_parallel_size",
    "max_model_len",
  ]);
  for (const [key, raw] of Object.entries(form)) {
    const value = raw.trim();
    if (value === "") continue;
    if (numeric.has(key)) {
      out[key] = Number.isFinite(Number(value)) ? Number(value) : value;
    } else if (key === "gpu_ids") {
      out[key] = value.split(/[\s,]+/).map((id) => (/^\d+$/.test(id) ? Number(id) : id));
    } else if (key === "extra_args") {
      out[key] = value
        .split(/\r?\n/)
        .map((line) => line.trim())
        .filter((line) => line !== "");
    } else {
      out[key] = value;
    }
  }
  return out;
}

function errorText(body: unknown): string {
  const error = (body as Partial<OpenAiError> | null)?.error;
  if (!error) return "the manager refused the request";
  return error.message;
}
