import type { MiddlewareHandler } from "hono";
import { AppError, errorResponse, quote } from "./errors.ts";
import { isLoopbackHost } from "./net.ts";

/**
 * What the Host header may say, checked before anything is routed.
 *
 * Bun builds `request.url` from the Host header, and leaves it as the bare path (`/health`)
 * when the header is missing or malformed (`a b`, `host/path`, empty, an HTTP/1.0 request
 * without one); Hono would then take the wrong part of it for the path and answer another
 * route. `hostMissing` is the one-character test for that, cheap enough for every request
 * (Node's server refuses such a request itself, with 400).
 */
export function hostMissing(request: Request): Response | undefined {
  if (request.url.charCodeAt(0) !== 47 /* "/" */) return undefined;
  return errorResponse("invalid_request", malformedHost);
}

const malformedHost =
  "the request's Host header is missing or malformed: send the host and port the URL names";

/**
 * A request's URL as an object, where a handler needs one (an origin to build links on): 400
 * when the Host header made it one the URL parser refuses (`x:99999`, `[::`), which Bun
 * passes on as it is.
 */
export function requestUrl(url: string): URL {
  try {
    return new URL(url);
  } catch {
    throw new AppError("invalid_request", malformedHost);
  }
}

/**
 * The host name an absolute URL is addressed to, without its port (an IPv6 literal keeps
 * its brackets); undefined for one that has no `scheme://authority`.
 */
export function urlHostname(url: string): string | undefined {
  const scheme = url.indexOf("://");
  if (scheme < 0) return undefined;
  const from = scheme + 3;
  let end = url.indexOf("/", from);
  if (end < 0) end = url.length;
  const authority = url.slice(from, end);
  if (authority.startsWith("[")) {
    const close = authority.indexOf("]");
    return close < 0 ? undefined : authority.slice(0, close + 1);
  }
  const colon = authority.lastIndexOf(":");
  return colon < 0 ? authority : authority.slice(0, colon);
}

/**
 * For a service that runs open (no token asked, which it allows on loopback only): answers
 * 403 to any request not addressed to a loopback host (`localhost`, 127.0.0.0/8, `[::1]`).
 * A web page the operator opens could otherwise reach it by DNS rebinding — its own name
 * made to resolve to 127.0.0.1, so that the browser sees nothing cross-origin — and drive its
 * API with no token to stop it. Local clients, which name the loopback address they dial,
 * are unaffected. `remedy` says what lifts it (the token to set).
 */
export function loopbackHostsOnly(service: string, remedy: string): MiddlewareHandler {
  return async (c, next) => {
    const host = urlHostname(c.req.url);
    if (host !== undefined && isLoopbackHost(host)) return next();
    return errorResponse(
      "forbidden",
      `this ${service} runs open (no token) and answers only requests addressed to localhost, 127.0.0.1 or [::1], not ${quote(host ?? "")}: a web page could otherwise reach it by DNS rebinding. ${remedy}`,
    );
  };
}
