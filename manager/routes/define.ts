/**
 * How a manager route is written: `app.openapi(createRoute({...}), handler)` on a
 * `routeGroup()`. The definition is the route's validator (its zod schemas run before the
 * handler, which reads the result with `c.req.valid(...)`), its auth check (`...access.admin`
 * puts the check and its `security` entry in the same place) and its entry in
 * `/openapi.json`, so the three cannot drift apart.
 */
import { OpenAPIHono } from "@hono/zod-openapi";
import type { Context, MiddlewareHandler } from "hono";
import type { z } from "zod";
import { storable, unstorableIn } from "../../db/storable.ts";
import { AppError, quote, validationError } from "../../kit/errors.ts";
import { openAiErrorSchema } from "../../protocol/index.ts";
import { type AuthContext, requireScope, type Scope } from "../auth.ts";

/** Where a failed validation target sits in the request, for the 400's message. */
const targetName: Record<string, string> = {
  json: "body",
  param: "path",
  query: "query",
  header: "headers",
};

/**
 * An `OpenAPIHono` whose validation failures are thrown as the shared 400 (`validationError`:
 * OpenAI's shape, the failing field's dotted path in `param`), rendered by the app's onError.
 */
export function routeGroup(): OpenAPIHono {
  return new OpenAPIHono({
    defaultHook: (result) => {
      if (!result.success) {
        throw validationError(result.error, targetName[result.target] ?? result.target);
      }
    },
  });
}

/** Security schemes of the document (registered once, on the app). */
export const securitySchemes = {
  adminToken: { type: "http", scheme: "bearer", description: "ADMIN_TOKEN" },
  routerToken: {
    type: "http",
    scheme: "bearer",
    description:
      "A router credential (`fr_…`) from POST /v1/routers (`fleet routers create NAME`), which a standalone or edge router reads from ROUTER_TOKEN; ADMIN_TOKEN is accepted too",
  },
  joinToken: {
    type: "http",
    scheme: "bearer",
    description:
      "FLEET_TOKEN, the join token: registers a worker_id that has not joined yet (ADMIN_TOKEN is accepted too)",
  },
  workerCredential: {
    type: "http",
    scheme: "bearer",
    description:
      "A worker's own credential (`fw_…`), issued when it joined: that worker's registrations and heartbeats",
  },
  metricsToken: {
    type: "http",
    scheme: "bearer",
    description:
      "METRICS_TOKEN: a scrape-only token that `GET /metrics` takes and nothing else does (the manager takes ADMIN_TOKEN there too)",
  },
  apiKey: {
    type: "http",
    scheme: "bearer",
    description:
      "An API key from POST /v1/keys; not needed on loopback before the first key exists",
  },
} as const;

const securityOf: Record<Scope, Record<string, string[]>[]> = {
  admin: [{ adminToken: [] }],
  router: [{ routerToken: [] }, { adminToken: [] }],
};

export type Access = Record<
  Scope,
  { security: Record<string, string[]>[]; middleware: MiddlewareHandler[] }
>;

/**
 * Spread into a route definition: who may call it (checked first, before the body is read)
 * and what the document says about it. The JSON body reader runs right after the check, so
 * a caller without the token gets 401 whatever it sent.
 */
export function accessFor(ctx: AuthContext): Access {
  const entry = (scope: Scope) => ({
    security: securityOf[scope],
    middleware: [requireScope(ctx, scope), jsonBodyReader(unstorableOf[scope])],
  });
  return { admin: entry("admin"), router: entry("router") };
}

/**
 * Access decided by a route's own check (worker identity needs the database, not only the
 * config): the check runs first, then the body reader, as for `accessFor`'s entries.
 */
export function checkedBy(
  security: Record<string, string[]>[],
  check: MiddlewareHandler,
): Access[Scope] {
  return { security, middleware: [check, jsonBodyReader("replace")] };
}

/**
 * What the characters Postgres cannot store become: NUL (U+0000), which neither text nor
 * jsonb holds, and UTF-16 surrogates without their pair (JSON's `\ud800` alone), which jsonb
 * refuses (a text column would silently get U+FFFD). One that reached a query would fail it
 * with a 500.
 * - `refuse`: 400 naming the field, for what people and the CLI send (an admin's input), where
 *   such a character is a mistake to report.
 * - `replace`: U+FFFD in their place, for what agents report (`checkedBy`: registrations,
 *   heartbeats, drains): an engine's log line may carry anything, and must not cost the
 *   worker its heartbeats.
 * - `keep`: for the routers' routes: `POST /v1/usage` sets a record it cannot store aside as
 *   a dead letter, one record at a time (docs/manager.md "Route snapshot").
 */
type Unstorable = "refuse" | "replace" | "keep";

const unstorableOf: Record<Scope, Unstorable> = { admin: "refuse", router: "keep" };

/**
 * JSON carries a NUL or a lone surrogate only as an escape (`\u0000`, `\udXXX`; a raw NUL is
 * not valid JSON, and bytes that are not UTF-8 were decoded to U+FFFD): a body without such
 * an escape has neither, and most bodies are not walked at all.
 */
const unstorableEscape = /\\u(?:0000|[dD][89a-fA-F])/;

/**
 * Reads a JSON body before the route's validator does, so that a malformed one is 400
 * `invalid_json` (not a validation error), an empty one reads as `{}`, a body sent as
 * something other than JSON gets a message that says what to send, and characters Postgres
 * cannot store are dealt with as `unstorable` says.
 */
const jsonBodyReader =
  (unstorable: Unstorable): MiddlewareHandler =>
  async (c, next) => {
    if (c.req.method !== "POST") return next();
    const type = c.req.header("content-type");
    let text: string;
    try {
      text = await c.req.text();
    } catch (error) {
      // The client closed its connection mid-upload: nobody reads the answer, and it is no
      // error of the manager's to log.
      throw new AppError("invalid_request", "the request body ended before it was complete", {
        cause: error,
      });
    }
    if (type === undefined && text.trim() === "") return next(); // validated as `{}`
    if (type === undefined || !/^application\/([\w.-]+\+)?json\s*(;|$)/i.test(type)) {
      throw new AppError(
        "invalid_request",
        `the request body must be JSON, sent with Content-Type: application/json (got ${type === undefined ? "no Content-Type" : quote(type)})`,
      );
    }
    if (text.trim() === "") {
      // An empty body is validated as an empty object.
      validateAs(c, "{}");
      return next();
    }
    let body: unknown;
    try {
      body = JSON.parse(text);
    } catch {
      throw new AppError("invalid_json", "request body is not valid JSON");
    }
    if (unstorable !== "keep" && unstorableEscape.test(text)) {
      if (unstorable === "refuse") {
        const at = unstorableAt(body, []);
        if (at) {
          const param = at.path.join(".");
          throw new AppError("invalid_request", `${param === "" ? "body" : param}: ${at.why}`, {
            param: param === "" ? null : param,
          });
        }
      } else {
        validateAs(c, JSON.stringify(storable(body)));
      }
    }
    return next();
  };

/**
 * Makes the route's validator read `text` as the body: it parses the cached text (Hono's
 * cache holds promises at run time; its type says the values themselves).
 */
function validateAs(c: Context, text: string): void {
  (c.req.bodyCache as unknown as { text: Promise<string> }).text = Promise.resolve(text);
}

/** The path of the first string (or key) in `value` that Postgres cannot store, and why. */
function unstorableAt(
  value: unknown,
  path: (string | number)[],
): { path: (string | number)[]; why: string } | undefined {
  if (typeof value === "string") {
    const why = unstorableIn(value);
    return why ? { path, why } : undefined;
  }
  if (Array.isArray(value)) {
    for (const [index, item] of value.entries()) {
      const found = unstorableAt(item, [...path, index]);
      if (found) return found;
    }
    return undefined;
  }
  if (typeof value !== "object" || value === null) return undefined;
  for (const [key, item] of Object.entries(value)) {
    const why = unstorableIn(key);
    if (why) return { path: [...path, key], why };
    const found = unstorableAt(item, [...path, key]);
    if (found) return found;
  }
  return undefined;
}

/** A required JSON request body validated by `schema`. */
export function jsonBody<S extends z.ZodType>(schema: S, description?: string) {
  return {
    required: true,
    ...(description ? { description } : {}),
    content: { "application/json": { schema } },
  } as const;
}

/** A JSON response. */
export function json<S extends z.ZodType>(schema: S, description: string) {
  return { description, content: { "application/json": { schema } } } as const;
}

const errorText: Record<number, string> = {
  400: "`invalid_request` (with `param`) or `invalid_json`",
  401: "`unauthorized`: missing or wrong token",
  404: "not found",
  409: "conflict",
  413: "`payload_too_large`: the body is larger than 16 MiB",
  503: "`unavailable`",
};

/** Error responses in OpenAI's shape, with optional per-route descriptions. */
export function errors(...entries: (number | [number, string])[]) {
  const out: Record<number, ReturnType<typeof json<typeof openAiErrorSchema>>> = {};
  for (const entry of entries) {
    const [status, text] = typeof entry === "number" ? [entry, errorText[entry]] : entry;
    out[status] = json(openAiErrorSchema, text ?? "error");
  }
  return out;
}
