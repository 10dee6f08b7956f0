import { connectionNamedHeaders, hopByHopHeaders } from "../kit/http-headers.ts";
import { LOAD_HEADER, type RouteEntry } from "../protocol/index.ts";

/**
 * Header hygiene for the hop to the agent and back.
 *
 * Upstream requests carry an allowlist, not a copy: the client's Authorization, cookies and
 * any custom credential header (`api-key`, `x-api-key`, ...) can never reach a worker by
 * accident, and hop-by-hop headers (including those named in `Connection`) are dropped by
 * construction. X-Forwarded-* are set by the router, never trusted from the client.
 */

const forwardedRequestHeaders = [
  "content-type",
  "accept",
  "user-agent",
  "x-session-id",
  "traceparent",
  "tracestate",
  "openai-organization",
  "openai-project",
] as const;

/**
 * The headers of a request to an agent, built once per client request. The credential is
 * not among them: each attempt sets its replica's own (`authorizeFor`).
 */
export function upstreamHeaders(options: {
  incoming: Headers;
  requestId: string;
  clientAddress: string | undefined;
  proto: string;
  host: string | null;
}): Record<string, string> {
  // A plain record: fetch implementations take it as is, and it costs no Headers object.
  const headers: Record<string, string> = {};
  for (const name of forwardedRequestHeaders) {
    const value = options.incoming.get(name);
    if (value !== null) headers[name] = value;
  }
  headers["content-type"] ??= "application/json";
  // fetch would transparently decompress and leave a stale Content-Encoding: ask for none.
  headers["accept-encoding"] = "identity";
  headers["x-request-id"] = options.requestId;
  if (options.clientAddress) headers["x-forwarded-for"] = options.clientAddress;
  headers["x-forwarded-proto"] = options.proto;
  if (options.host) headers["x-forwarded-host"] = options.host;
  return headers;
}

/**
 * Sets the credential for the replica an attempt goes to: the route's agent credential,
 * which works on that worker alone. Never a fleet-wide secret, and never the client's key;
 * a route without one (open mode) is sent none.
 */
export function authorizeFor(
  headers: Record<string, string>,
  route: Pick<RouteEntry, "agent_token">,
): void {
  if (route.agent_token) headers.authorization = `Bearer ${route.agent_token}`;
  else delete headers.authorization;
}

/**
 * The agent's response headers minus hop-by-hop ones, those `Connection` names, cookies and
 * `x-fleet-load` (the engine's load is the fleet's business, not the client's).
 */
export function downstreamHeaders(upstream: Headers, bodyRewritten: boolean): Headers {
  const headers = new Headers();
  const named = connectionNamedHeaders(upstream);
  upstream.forEach((value, name) => {
    if (hopByHopHeaders.has(name) || named.has(name)) return;
    if (name === "content-encoding") return;
    if (name === "content-length" && (bodyRewritten || upstream.has("content-encoding"))) return;
    if (name === "set-cookie" || name === LOAD_HEADER) return;
    headers.append(name, value);
  });
  return headers;
}
