import { connectionNamedHeaders, hopByHopHeaders } from "../kit/http-headers.ts";

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

export function upstreamHeaders(options: {
  incoming: Headers;
  fleetToken: string | undefined;
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
  if (options.fleetToken) headers.authorization = `Bearer ${options.fleetToken}`;
  if (options.clientAddress) headers["x-forwarded-for"] = options.clientAddress;
  headers["x-forwarded-proto"] = options.proto;
  if (options.host) headers["x-forwarded-host"] = options.host;
  return headers;
}

/** The agent's response headers minus hop-by-hop ones and those `Connection` names. */
export function downstreamHeaders(upstream: Headers, bodyRewritten: boolean): Headers {
  const headers = new Headers();
  const named = connectionNamedHeaders(upstream);
  upstream.forEach((value, name) => {
    if (hopByHopHeaders.has(name) || named.has(name)) return;
    if (name === "content-encoding") return;
    if (name === "content-length" && (bodyRewritten || upstream.has("content-encoding"))) return;
    if (name === "set-cookie") return;
    headers.append(name, value);
  });
  return headers;
}
