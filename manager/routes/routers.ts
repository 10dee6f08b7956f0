import { createRoute, type OpenAPIHono } from "@hono/zod-openapi";
import {
  routerCreatedSchema,
  routerCreateSchema,
  routerIdParamsSchema,
  routerInfoSchema,
  routerListSchema,
} from "../../protocol/index.ts";
import type { ManagerContext } from "../context.ts";
import { accessFor, errors, json, jsonBody, routeGroup } from "./define.ts";

const tags = ["Router credentials"];

/**
 * `/v1/routers` (ADMIN_TOKEN): credentials of standalone and edge routers, which read the
 * route snapshot and post usage with them (`ROUTER_TOKEN`). The token is shown once, in the
 * reply that creates it; the database keeps only its SHA-256 and a short prefix.
 */
export function routersRoutes(ctx: ManagerContext): OpenAPIHono {
  const access = accessFor(ctx);
  const app = routeGroup();

  app.openapi(
    createRoute({
      method: "post",
      path: "/",
      tags,
      summary: "Create a router credential; the reply is the only place the token is ever shown",
      ...access.admin,
      request: { body: jsonBody(routerCreateSchema) },
      responses: {
        201: json(routerCreatedSchema, "the new credential, with `token` in full"),
        ...errors(400, 401, [409, "`conflict`: a credential with that name exists"]),
      },
    }),
    async (c) => {
      const { name } = c.req.valid("json");
      const { info, token } = await ctx.routerCredentials.create(name);
      return c.json({ ...info, token }, 201);
    },
  );

  app.openapi(
    createRoute({
      method: "get",
      path: "/",
      tags,
      summary: "List router credentials with their last use (never the tokens)",
      ...access.admin,
      responses: {
        200: json(routerListSchema, "every credential, revoked ones too"),
        ...errors(401),
      },
    }),
    async (c) => c.json({ routers: await ctx.routerCredentials.list() }, 200),
  );

  app.openapi(
    createRoute({
      method: "delete",
      path: "/{id}",
      tags,
      summary: "Revoke a router credential; the next request that presents it is refused",
      ...access.admin,
      request: { params: routerIdParamsSchema },
      responses: {
        200: json(routerInfoSchema, "the credential's record with `revoked_at` set"),
        ...errors(
          400,
          401,
          [404, "`not_found`: no credential with that id"],
          [409, "`conflict`: already revoked"],
        ),
      },
    }),
    async (c) => c.json(await ctx.routerCredentials.revoke(c.req.valid("param").id), 200),
  );

  return app;
}
