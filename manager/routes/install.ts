import { createRoute, z } from "@hono/zod-openapi";
import { eq } from "drizzle-orm";
import { schema } from "../../db/index.ts";
import { AppError } from "../../kit/errors.ts";
import { requestUrl } from "../../kit/host-check.ts";
import { isLoopbackHost } from "../../kit/net.ts";
import { fleetVersion } from "../../kit/version.ts";
import { installCommandReplySchema, installCommandRequestSchema } from "../../protocol/index.ts";
import type { ManagerContext } from "../context.ts";
import type { AgentDownload } from "../deps.ts";
import { installLine } from "../install-line.ts";
import { installScript, missingAgentScript } from "../install-script.ts";
import { credentialsRequired } from "../worker-auth.ts";
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
      const base = ctx.config.publicUrl ?? requestUrl(c.req.url).origin;
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
        "`curl -fsSL {manager}/install.sh | FLEET_TOKEN=… WORKER_ID=… PUBLIC_URL=… sh` for this worker id, with the join token written out: what `npm start` prints only on a terminal. {manager} is MANAGER_PUBLIC_URL, else the URL this request came to. `WORKER_URL` and `PUBLIC_URL` are each in the line when given. For a worker id that has joined already the line is still given (on its own host it upgrades the agent in place), with a `warning`: on another host its join would be refused until the worker is removed.",
      ...accessFor(ctx).admin,
      request: { body: jsonBody(installCommandRequestSchema) },
      responses: {
        200: json(installCommandReplySchema, "the line"),
        ...errors(400, 401),
      },
    }),
    async (c) => {
      const body = c.req.valid("json");
      const base = ctx.config.publicUrl ?? requestUrl(c.req.url).origin;
      const command = installLine({
        base,
        fleetToken: ctx.config.fleetToken,
        workerId: body.worker_id,
        publicUrl: body.public_url,
        workerUrl: body.worker_url,
        loopback: isLoopbackHost(ctx.config.host) && !body.public_url && !body.worker_url,
      });
      const agentAvailable = (await download?.current()) !== undefined;
      const warning = await joinedWarning(ctx, body.worker_id);
      return c.json(
        {
          command,
          manager_url: base,
          agent_available: agentAvailable,
          ...(warning ? { warning } : {}),
        },
        200,
      );
    },
  );
  return app;
}

/**
 * A worker id that has joined already: the line is still right for its own host (re-running
 * it upgrades the agent, which keeps presenting its credential), so it is given, not refused;
 * but on a new or wiped host the join is refused (409), which the operator learns here rather
 * than from that host's log. In open mode nothing is refused, so nothing is said.
 */
async function joinedWarning(ctx: ManagerContext, workerId: string): Promise<string | undefined> {
  if (!credentialsRequired(ctx)) return undefined;
  const [worker] = await ctx.db
    .select({
      status: schema.workers.status,
      lastHeartbeat: schema.workers.lastHeartbeat,
      credentialHash: schema.workers.credentialHash,
    })
    .from(schema.workers)
    .where(eq(schema.workers.workerId, workerId));
  if (!worker?.credentialHash) return undefined;
  return `worker ${workerId} has already joined (${worker.status}, last heard from ${worker.lastHeartbeat.toISOString()}). On its own host, where its agent keeps its credential, this line upgrades the agent in place; on another host, or one whose agent data directory is gone, the join is refused (409 already registered): remove the worker first with fleet workers rm ${workerId}, or choose another worker id`;
}
