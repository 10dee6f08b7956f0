import type { Server } from "bun";
import type { ClientIdleTimer, ClientLimits } from "../kit/client-limits.ts";
import { hostMissing } from "../kit/host-check.ts";
import type { Logger } from "../kit/log.ts";

type Handler = (request: Request, server: Server<undefined>) => Response | Promise<Response>;

/**
 * Bun.serve under the client limits (docs/operations.md "Slow clients"). What Bun does on
 * its own, measured on Bun 1.4.5:
 * - The request line and headers must arrive within about 10 s (closed at 12-13 s, with or
 *   without bytes trickling in): fixed in Bun, neither `idleTimeout` nor HEADER_TIMEOUT_S
 *   changes it, and nothing is answered.
 * - `idleTimeout` closes a connection with nothing sent for that long: between requests,
 *   while a handler has written nothing yet, and in a body that trickles in (slow bytes do
 *   not reset it). Its clock ticks in 4 s steps.
 * - `server.timeout(request, s)` changes it for the request's connection, and the change
 *   outlives the response: it must be set back before the response ends, or the kept-alive
 *   connection inherits it (a POST once held with 0 kept its connection forever).
 *
 * So the server's idle timeout is KEEPALIVE_TIMEOUT_S, and `idleTimer` is what the router
 * app holds (0: its own body deadline and upstream timeouts bound the request, and a stream
 * may pause between tokens for longer than any keep-alive) and releases when the response
 * ends. Requests nobody holds run under `busyS` when given (the manager's API, whose
 * handlers may wait on an agent) and go back to the keep-alive timeout when they answer.
 * A request without a usable Host header is answered 400 before the app sees it
 * (kit/host-check.ts `hostMissing`).
 */
export function serveBun(options: { limits: ClientLimits; busyS?: number; log?: Logger }): {
  idleTimer: ClientIdleTimer;
  listen(options: { hostname: string; port: number; fetch: Handler }): Server<undefined>;
} {
  const { keepAliveS, headerTimeoutMs } = options.limits;
  if (headerTimeoutMs !== 10_000) {
    options.log?.warn(
      "HEADER_TIMEOUT_S is not used on Bun: Bun closes a connection whose headers take about 10 s",
      { header_timeout_s: headerTimeoutMs / 1000 },
    );
  }
  const busyS = options.busyS;
  let server: Server<undefined> | undefined;
  const held = new WeakSet<Request>();
  const idleTimer: ClientIdleTimer = {
    hold(request) {
      held.add(request);
      server?.timeout(request, 0);
    },
    release(request) {
      if (!held.delete(request)) return;
      server?.timeout(request, keepAliveS);
    },
  };
  return {
    idleTimer,
    listen({ hostname, port, fetch }) {
      server = Bun.serve({
        hostname,
        port,
        idleTimeout: keepAliveS,
        fetch:
          busyS === undefined
            ? (request, bunServer) => hostMissing(request) ?? fetch(request, bunServer)
            : async (request, bunServer) => {
                const refused = hostMissing(request);
                if (refused) return refused;
                bunServer.timeout(request, busyS);
                try {
                  return await fetch(request, bunServer);
                } finally {
                  if (!held.has(request)) bunServer.timeout(request, keepAliveS);
                }
              },
      });
      return server;
    },
  };
}
