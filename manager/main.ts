/** `bun manager/main.ts` (`npm start`): the manager with the router mounted, on Bun. */
import { ensureFetchCapacity } from "../runtime/bun-fetch-capacity.ts";
import { startGcPacer } from "../runtime/gc-pacer.ts";
import { createHttp1Fetch } from "../runtime/http1-fetch.ts";
import { runManager } from "./server.ts";

// The manager's own calls to agents use Bun's fetch; see the function's doc.
const fetchCapacityProblem = ensureFetchCapacity(process.env, 65_000);
if (fetchCapacityProblem) {
  console.warn(
    `manager: could not raise Bun's fetch cap (${fetchCapacityProblem}); at most 256 requests reach agents at once`,
  );
}

await runManager({
  env: process.env,
  runtime: `bun ${Bun.version}`,
  // The mounted router proxies over the same HTTP/1.1 client as a standalone Bun router.
  upstreamFetch: createHttp1Fetch().fetch,
  startGcPacer: (growthBytes) => startGcPacer({ growthBytes }),
  serve: async ({ fetch, hostname, port }) => {
    const server = Bun.serve({ fetch, hostname, port, idleTimeout: 0 });
    return { port: server.port ?? port, stop: () => server.stop() };
  },
});
