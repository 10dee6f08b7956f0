import { z } from "zod";

/**
 * Cross-origin access to the OpenAI surface for web pages (CORS_ORIGINS). vLLM's own server
 * lets every origin in by default (`--allowed-origins '*'`), so a web app that works against
 * one vLLM would break behind the fleet without it. Callers prove who they are with bearer
 * keys, never cookies, and no credentials mode is offered: `*` lets a page read what it asked
 * for with the key it already holds, and nothing more.
 *
 * Only a request that carries `Origin` (a browser's) pays for it; others are untouched.
 */
export class Cors {
  /** `*`, or the origins allowed, as browsers write them (`https://app.example.com`). */
  constructor(readonly origins: "*" | ReadonlySet<string>) {}

  /** What `Access-Control-Allow-Origin` says to `origin`; undefined: it may not read. */
  allow(origin: string): string | undefined {
    if (this.origins === "*") return "*";
    return this.origins.has(origin) ? origin : undefined;
  }

  /**
   * The answer to a preflight (`OPTIONS` before a cross-origin POST with JSON or a key): 204,
   * with the permissions when the origin may call, without them (so the browser stops there)
   * when it may not. The request headers the page asks for are granted by name, since a
   * wildcard does not cover `Authorization`.
   */
  preflight(request: Request): Response {
    const headers = new Headers({ vary: varyOn });
    const origin = request.headers.get("origin");
    const allowed = origin === null ? undefined : this.allow(origin);
    if (allowed !== undefined) {
      headers.set("access-control-allow-origin", allowed);
      headers.set("access-control-allow-methods", "GET, POST, OPTIONS");
      const asked = request.headers.get("access-control-request-headers");
      headers.set(
        "access-control-allow-headers",
        asked !== null && headerList.test(asked) ? asked : "authorization, content-type",
      );
      headers.set("access-control-max-age", String(preflightMaxAgeS));
    }
    return new Response(null, { status: 204, headers });
  }

  /** `response` readable by the page at `origin` when it may be (headers set in place). */
  decorate(response: Response, origin: string): Response {
    const allowed = this.allow(origin);
    if (allowed === undefined) return response;
    let target = response;
    try {
      target.headers.set("access-control-allow-origin", allowed);
    } catch {
      // A response whose headers cannot change (one handed through from a fetch): a copy.
      target = new Response(response.body, response);
      target.headers.set("access-control-allow-origin", allowed);
    }
    target.headers.set("access-control-expose-headers", exposed);
    if (allowed !== "*") target.headers.append("vary", "origin");
    return target;
  }
}

/**
 * `response` made readable to the page at `origin` (the request's `Origin`) when `cors` lets
 * it; unchanged for a request without one (not a browser's) or without CORS.
 */
export function readableBy(
  cors: Cors | undefined,
  origin: string | undefined,
  response: Response,
): Response {
  return cors && origin ? cors.decorate(response, origin) : response;
}

/** A preflight is cached this long (Starlette's default, which vLLM serves). */
const preflightMaxAgeS = 600;
/** What a page's script may read of an answer beyond the safelisted headers. */
const exposed = "x-request-id, retry-after";
const varyOn = "origin, access-control-request-headers";
/** `Access-Control-Request-Headers` as browsers send it: header names and commas. */
const headerList = /^[\w-]+(\s*,\s*[\w-]+)*$/;

/**
 * CORS_ORIGINS: `*` (the default: every origin, as vLLM), `none` (no cross-origin reads), or
 * a comma-separated list of origins (`https://app.example.com,http://localhost:3000`), each
 * written as a browser sends it: scheme, host and a port other than the default, no path.
 */
export const corsOriginsSchema = z
  .string()
  .trim()
  .default("*")
  .transform((value, ctx): Cors | undefined => {
    if (value === "" || value === "*") return new Cors("*");
    if (value.toLowerCase() === "none") return undefined;
    const origins = new Set<string>();
    for (const entry of value.split(",")) {
      const origin = entry.trim();
      if (origin === "") continue;
      const parsed = URL.canParse(origin) ? new URL(origin) : undefined;
      if (
        !parsed ||
        (parsed.protocol !== "http:" && parsed.protocol !== "https:") ||
        parsed.origin !== origin.replace(/\/$/, "").toLowerCase()
      ) {
        ctx.addIssue({
          code: "custom",
          message: `${JSON.stringify(origin.slice(0, 100))} is not an origin: write scheme, host and port only, as https://app.example.com (or * for every origin, none for no cross-origin access)`,
        });
        return z.NEVER;
      }
      origins.add(parsed.origin);
    }
    return origins.size > 0 ? new Cors(origins) : undefined;
  });
