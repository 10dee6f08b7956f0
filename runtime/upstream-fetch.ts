import type { FetchLike } from "../router/app.ts";
import { createHttp1Fetch } from "./http1-fetch.ts";

/**
 * The Bun router's client for the hop to agents: Bun's own `fetch` with its 5-minute idle
 * timeout off (the router's first-byte and idle timeouts govern), or the hand-written
 * HTTP/1.1 client.
 */
export function createUpstreamFetch(options: {
  client: "fetch" | "http1";
  connectTimeoutMs: number;
}): { fetch: FetchLike; close(): void } {
  if (options.client === "http1") {
    const http1 = createHttp1Fetch({ connectTimeoutMs: options.connectTimeoutMs });
    return { fetch: http1.fetch, close: http1.close };
  }
  const bunFetch: FetchLike = (input, init) =>
    fetch(input, { ...init, timeout: false, decompress: false } as BunFetchRequestInit);
  return { fetch: bunFetch, close() {} };
}
