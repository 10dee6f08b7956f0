/**
 * Hop-by-hop headers (RFC 9110 §7.6.1, plus the legacy names Go's ReverseProxy strips):
 * they describe one connection and are never forwarded by a proxy.
 */
export const hopByHopHeaders: ReadonlySet<string> = new Set([
  "connection",
  "keep-alive",
  "proxy-authenticate",
  "proxy-authorization",
  "proxy-connection",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
]);

/** The header names a `Connection` header lists: hop-by-hop for this message too. */
export function connectionNamedHeaders(headers: Headers): Set<string> {
  const named = new Set<string>();
  const connection = headers.get("connection");
  if (connection) {
    for (const token of connection.split(",")) {
      const name = token.trim().toLowerCase();
      if (name) named.add(name);
    }
  }
  return named;
}

/** True when `name` must not be forwarded with a message whose headers are `headers`. */
export function isHopByHop(name: string, named: ReadonlySet<string>): boolean {
  const lower = name.toLowerCase();
  return hopByHopHeaders.has(lower) || named.has(lower);
}
