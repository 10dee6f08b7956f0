import type { FetchLike } from "../kit/fetch.ts";
import type { Logger } from "../kit/log.ts";
import { createHttp1Fetch } from "./http1-fetch.ts";

/**
 * The Bun router's client for the hop to agents (standalone, and mounted in the manager).
 * `http1` (the default): runtime/http1-fetch.ts, chosen by measurement (docs/router.md "The
 * upstream client on Bun"). `fetch`: Bun's own, with its 5-minute idle timeout off (the
 * router's first-byte and idle timeouts govern); it has no connect timeout, and it needs
 * BUN_CONFIG_MAX_HTTP_REQUESTS set at startup. It stays selectable so that bench/gateway.ts
 * can measure both side by side again (a new Bun may change the answer).
 */
export function createUpstreamFetch(options: {
  client: "fetch" | "http1";
  connectTimeoutMs: number;
  /** BUN_CONFIG_MAX_HTTP_REQUESTS as the process was started with. */
  fetchCap: number | undefined;
  log: Logger;
}): { fetch: FetchLike; close(): void } {
  if (options.client === "http1") {
    const http1 = createHttp1Fetch({ connectTimeoutMs: options.connectTimeoutMs });
    return { fetch: http1.fetch, close: http1.close };
  }
  if (options.fetchCap === undefined) {
    options.log.warn(
      "UPSTREAM_CLIENT=fetch without BUN_CONFIG_MAX_HTTP_REQUESTS: Bun's fetch keeps at most 256 requests in flight, and request 257 waits inside the router (set it, e.g. to 65000, where the process starts)",
    );
  }
  options.log.info(
    "upstream client: Bun's fetch (no connect timeout: CONNECT_TIMEOUT_MS is not applied)",
  );
  const bunFetch: FetchLike = (input, init) =>
    fetch(input, { ...init, timeout: false, decompress: false } as BunFetchRequestInit);
  return { fetch: bunFetch, close() {} };
}
