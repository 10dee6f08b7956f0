/** `bun manager/main.ts` (`npm start`): the manager with the router mounted, on Bun. */
import { startGcPacer } from "../runtime/gc-pacer.ts";
import { createHttp1Fetch } from "../runtime/http1-fetch.ts";
import { runManager } from "./server.ts";

await runManager({
  env: process.env,
  runtime: `bun ${Bun.version}`,
  // The mounted router proxies over the same HTTP/1.1 client as a standalone Bun router (no
  // cap on requests in flight, a real connect timeout); the manager's own few calls to
  // agents (launch, stop) use Bun's fetch.
  upstreamFetch: createHttp1Fetch().fetch,
  startGcPacer: (growthBytes) => startGcPacer({ growthBytes }),
  serve: async ({ fetch, hostname, port }) => {
    const server = Bun.serve({ fetch, hostname, port, idleTimeout: 0 });
    return { port: server.port ?? port, stop: () => server.stop() };
  },
});
