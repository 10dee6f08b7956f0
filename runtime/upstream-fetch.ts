import type { FetchLike } from "../kit/fetch.ts";
import type { Logger } from "../kit/log.ts";
import { createHttp1Fetch } from "./http1-fetch.ts";

/** The clients a Bun router (standalone, or mounted in the manager) reaches agents with. */
export type UpstreamClients = {
  /** Non-streamed requests, and the router's own calls to the manager. */
  fetch: FetchLike;
  /** Requests with `"stream": true`. */
  streamFetch: FetchLike;
  close(): void;
};

export type UpstreamClient = "auto" | "fetch" | "http1";

/**
 * The Bun router's clients for the hop to agents, chosen by UPSTREAM_CLIENT from figures in
 * docs/router.md ("The upstream client on Bun"):
 * - `auto` (the default): Bun's `fetch` for non-streamed requests, whose socket work runs on
 *   Bun's HTTP thread (measured well ahead of the hand-written client at 64 connections),
 *   and runtime/http1-fetch.ts for streams, which holds less memory at 1,000 open streams
 *   and has a real connect timeout (figures in docs/benchmarks.md, "Gateway"). Bun's
 *   `fetch` keeps at most BUN_CONFIG_MAX_HTTP_REQUESTS requests in flight, read only when
 *   the process starts; when it is not set (Bun's default, 256) every request goes through
 *   the HTTP/1.1 client rather than queue inside the router.
 * - `http1`: the hand-written client for everything.
 * - `fetch`: Bun's own for everything, its 5-minute idle timeout off (the router's own
 *   first-byte and idle timeouts govern); no connect timeout.
 * Both stay selectable so that bench/gateway.ts can measure them side by side again (a new
 * Bun may change the answer).
 */
export function createUpstreamFetch(options: {
  client: UpstreamClient;
  connectTimeoutMs: number;
  /** BUN_CONFIG_MAX_HTTP_REQUESTS as the process was started with. */
  fetchCap: number | undefined;
  log: Logger;
}): UpstreamClients {
  const { client, fetchCap, log } = options;
  const bunFetch: FetchLike = (input, init) =>
    fetch(input, { ...init, timeout: false, decompress: false } as BunFetchRequestInit);
  if (client === "fetch") {
    if (fetchCap === undefined) {
      log.warn(
        "UPSTREAM_CLIENT=fetch without BUN_CONFIG_MAX_HTTP_REQUESTS: Bun's fetch keeps at most 256 requests in flight, and request 257 waits inside the router (set it, e.g. to 65000, where the process starts)",
      );
    }
    log.info(
      "upstream client: Bun's fetch (no connect timeout: CONNECT_TIMEOUT_MS is not applied)",
    );
    return { fetch: bunFetch, streamFetch: bunFetch, close() {} };
  }
  const http1 = createHttp1Fetch({ connectTimeoutMs: options.connectTimeoutMs });
  if (client === "http1" || fetchCap === undefined) {
    if (client === "auto") {
      log.info(
        "upstream client: the HTTP/1.1 client for every request (BUN_CONFIG_MAX_HTTP_REQUESTS is not set, so Bun's fetch would hold at most 256 in flight; `npm run router` and `npm start` set it)",
      );
    }
    return { fetch: http1.fetch, streamFetch: http1.fetch, close: http1.close };
  }
  return { fetch: bunFetch, streamFetch: http1.fetch, close: http1.close };
}
