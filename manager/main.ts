/** `bun manager/main.ts` (`npm start`): the manager with the router mounted, on Bun. */
import { runManager } from "./server.ts";

await runManager({
  env: process.env,
  runtime: `bun ${Bun.version}`,
  serve: async ({ fetch, hostname, port }) => {
    const server = Bun.serve({ fetch, hostname, port, idleTimeout: 0 });
    return { port: server.port ?? port, stop: () => server.stop() };
  },
});
