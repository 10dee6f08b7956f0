import { createRoute, type OpenAPIHono } from "@hono/zod-openapi";
import {
  instanceIdParamsSchema,
  instanceRecordSchema,
  instanceRestartSchema,
} from "../../protocol/index.ts";
import type { ManagerContext } from "../context.ts";
import { restartInstance } from "../services/restart.ts";
import { accessFor, errors, json, jsonBody, routeGroup } from "./define.ts";

const tags = ["Instances"];

/** `/v1/instances/...` (ADMIN_TOKEN): actions on one instance of a model. */
export function instancesRoutes(ctx: ManagerContext): OpenAPIHono {
  const access = accessFor(ctx);
  const app = routeGroup();

  app.openapi(
    createRoute({
      method: "post",
      path: "/{id}/restart",
      tags,
      summary:
        "Restart one instance: its engine stops and launches again on the same GPUs and port",
      description:
        "Only a `ready` instance on an online worker restarts. Its route stops being served at once; the agent stops the engine (its whole process group) and launches it again, and its reports bring the instance through `starting` (with the launch's progress) back to `ready`, when the route is served again. `restarts` counts it; an `instance.restarted` event records who asked. The body is optional.",
      ...access.admin,
      request: {
        params: instanceIdParamsSchema,
        body: jsonBody(instanceRestartSchema, "may be empty: `{}`"),
      },
      responses: {
        202: json(instanceRecordSchema, "the restart has begun: the instance, `stopping`"),
        ...errors(
          400,
          401,
          [404, "`instance_not_found`"],
          [
            409,
            "`conflict`: the instance is not ready (starting, stopping: a restart already under way, failed, lost, pending), its worker is draining or offline, or the agent refused",
          ],
          [502, "`upstream_error`: the agent could not be reached; nothing was restarted"],
        ),
      },
    }),
    async (c) => {
      const { id } = c.req.valid("param");
      const record = await restartInstance(ctx, id, c.req.valid("json"), {
        auth: ctx.config.adminToken ? "admin token" : "open (no ADMIN_TOKEN, loopback)",
      });
      return c.json(record, 202);
    },
  );

  return app;
}
