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

/** Never passed back: the body is relayed decoded, cookies are the agent's, loads the fleet's. */
const droppedResponseHeaders: ReadonlySet<string> = new Set([
  ...hopByHopHeaders,
  "content-encoding",
  "set-cookie",
  LOAD_HEADER,
]);

/** Whether the agent's response header `name` (lower case) never reaches the client. */
export function droppedDownstream(name: string): boolean {
  return droppedResponseHeaders.has(name);
}

const none: readonly string[] = [];

/** The agent's response headers that never reach the client (`droppedDownstream`). */
export function droppedFields(upstream: Headers): readonly string[] {
  let dropped: string[] | undefined;
  for (const name of upstream.keys()) {
    if (!droppedDownstream(name)) continue;
    dropped ??= [];
    dropped.push(name);
  }
  return dropped ?? none;
}

/**
 * The client's response: `body` under the agent's response headers minus hop-by-hop ones,
 * those `Connection` names, cookies and `x-fleet-load` (the engine's load is the fleet's
 * business, not the client's), plus `set` (the request id, a relayed stream's own headers).
 * The response copies the agent's headers once and the copy is trimmed in place: a separate
 * filtered `Headers` handed to the constructor would be copied again. `dropped` is
 * `droppedFields(upstream)` when the caller has it already (the answer check reads every
 * field once: answer-check.ts), so that no field is looked up by name (measured in
 * docs/benchmarks.md "Fifth round").
 */
export function downstreamResponse(
  body: BodyInit | null,
  status: number,
  upstream: Headers,
  options: {
    bodyRewritten: boolean;
    set: Readonly<Record<string, string>>;
    dropped?: readonly string[];
  },
): Response {
  let response = new Response(body, { status, headers: upstream });
  if (response.headers === upstream) {
    // @hono/node-server's Response (the manager and router on Node) keeps the Headers it is
    // given instead of copying them: it gets a copy of its own, or the agent's answer (whose
    // headers a fetch made immutable) would be trimmed in place.
    response = new Response(body, { status, headers: new Headers(upstream) });
  }
  const { headers } = response;
  let lengthStale = options.bodyRewritten;
  for (const name of options.dropped ?? droppedFields(upstream)) {
    headers.delete(name);
    // Fetch hands over decoded bytes: the encoded length no longer describes them.
    if (name === "content-encoding") lengthStale = true;
    if (name !== "connection") continue;
    for (const named of connectionNamedHeaders(upstream)) {
      try {
        headers.delete(named);
      } catch {
        // Not a valid header name, so no field by that name to drop.
      }
    }
  }
  if (lengthStale) headers.delete("content-length");
  for (const name in options.set) {
    const value = options.set[name];
    if (value !== undefined) headers.set(name, value);
  }
  return response;
}
