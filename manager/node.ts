/** `npm run manager:node` (tsx manager/node.ts): the same manager app on Node. */
import type { Server } from "node:http";
import { serve } from "@hono/node-server";
import { getConnInfo } from "@hono/node-server/conninfo";
import { nodeServer } from "../kit/shutdown.ts";
import { answerClientError, nodeServerOptions } from "../runtime/node-serve.ts";
import { runManager } from "./server.ts";

await runManager({
  env: process.env,
  runtime: `node ${process.version}`,
  clientAddress: (c) => getConnInfo(c).remote.address,
  server: (limits) => ({
    serve: ({ fetch, hostname, port }) =>
      new Promise((resolve) => {
        const server = serve(
          { fetch, hostname, port, serverOptions: nodeServerOptions(limits) },
          (info) => {
            resolve({ port: info.port, server: nodeServer(server as Server) });
          },
        );
        server.on("clientError", answerClientError);
      }),
  }),
});
