import { createRoute, z } from "@hono/zod-openapi";
import { AppError } from "../../kit/errors.ts";
import { isLoopbackHost } from "../../kit/net.ts";
import { fleetVersion } from "../../kit/version.ts";
import { installCommandReplySchema, installCommandRequestSchema } from "../../protocol/index.ts";
import type { ManagerContext } from "../context.ts";
import type { AgentDownload } from "../deps.ts";
import { installLine } from "../install-line.ts";
import { installScript, missingAgentScript } from "../install-script.ts";
import { accessFor, errors, json, jsonBody, routeGroup } from "./define.ts";

const howToBuild =
  "this manager has no agent executable to hand out: build it with `npm run build:agent` (writes dist/fleet-agent and dist/fleet-agent.gz) in the manager's checkout, or put fleet-agent beside the fleet-manager executable, or point AGENT_BINARY at one";

/**
 * `GET /install.sh` and `GET /downloads/fleet-agent`: a GPU host joins with one line,
 * `curl -fsSL {manager}/install.sh | FLEET_TOKEN=… WORKER_ID=… PUBLIC_URL=… sh`. Both are open:
 * the executable holds no secret, and the script only the manager's URL and the checksum.
 */
export function installRoutes(ctx: ManagerContext, download: AgentDownload | undefined) {
  const app = routeGroup();
  const missing = () => (download ? `${howToBuild} (looked for ${download.location})` : howToBuild);

  app.openapi(
    createRoute({
      method: "get",
      path: "/install.sh",
      tags: ["Operations"],
      summary: "The agent's installer: `curl -fsSL {manager}/install.sh | FLEET_TOKEN=… sh`",
      description:
        "A POSIX shell script that downloads the agent executable from this manager (`/downloads/fleet-agent`), checks its SHA-256, writes the agent's variables to an env file only its user can read and starts it (a systemd service as root where systemd runs, else in the background with a pid file and a log file); run again, it upgrades in place. It downloads from MANAGER_PUBLIC_URL when set, else from the URL this request came in on. When the manager has no agent executable the script prints how to build one and exits 1.",
      security: [],
      responses: {
        200: {
          description: "the script",
          content: { "text/x-shellscript": { schema: z.string() } },
        },
      },
    }),
    async (c) => {
      const artifact = await download?.current();
      const headers = {
        "content-type": "text/x-shellscript; charset=utf-8",
        "cache-control": "no-store",
      };
      if (!artifact) return c.body(missingAgentScript(missing()), 200, headers);
      const base = ctx.config.publicUrl ?? new URL(c.req.url).origin;
      return c.body(
        installScript({ base, sha256: artifact.sha256, version: fleetVersion }),
        200,
        headers,
      );
    },
  );

  app.openapi(
    createRoute({
      method: "get",
      path: "/downloads/fleet-agent",
      tags: ["Operations"],
      summary: "The agent executable for this manager's platform, gzipped",
      description:
        "What `/install.sh` downloads: `bun build --compile` of the agent (`npm run build:agent`), gzipped. Its SHA-256 is in the `x-checksum-sha256` header and in `/install.sh`. 404 when the manager has none, with how to build it.",
      security: [],
      responses: {
        200: {
          description: "the gzipped executable",
          content: { "application/gzip": { schema: z.string().openapi({ format: "binary" }) } },
        },
        ...errors([
          404,
          "`not_found`: this manager has no agent executable (the message says how to build one)",
        ]),
      },
    }),
    async (c) => {
      const artifact = await download?.current();
      if (!artifact) throw new AppError("not_found", missing());
      return c.body(artifact.gzip, 200, {
        "content-type": "application/gzip",
        "content-disposition": 'attachment; filename="fleet-agent.gz"',
        "x-checksum-sha256": artifact.sha256,
        "cache-control": "no-store",
      });
    },
  );
  app.openapi(
    createRoute({
      method: "post",
      path: "/v1/workers/install-command",
      tags: ["Workers"],
      summary: "The line that adds a GPU host, join token included (`fleet workers add`)",
      description:
        "`curl -fsSL {manager}/install.sh | FLEET_TOKEN=… WORKER_ID=… PUBLIC_URL=… sh` for this worker id, with the join token written out: what `npm start` prints only on a terminal. {manager} is MANAGER_PUBLIC_URL, else the URL this request came to.",
      ...accessFor(ctx).admin,
      request: { body: jsonBody(installCommandRequestSchema) },
      responses: {
        200: json(installCommandReplySchema, "the line"),
        ...errors(400, 401),
      },
    }),
    async (c) => {
      const body = c.req.valid("json");
      const base = ctx.config.publicUrl ?? new URL(c.req.url).origin;
      const command = installLine({
        base,
        fleetToken: ctx.config.fleetToken,
        workerId: body.worker_id,
        publicUrl: body.public_url,
        workerUrl: body.worker_url,
        loopback: isLoopbackHost(ctx.config.host) && !body.public_url && !body.worker_url,
      });
      const agentAvailable = (await download?.current()) !== undefined;
      return c.json({ command, manager_url: base, agent_available: agentAvailable }, 200);
    },
  );
  return app;
}
