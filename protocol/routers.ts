import { z } from "zod";
import { isoTimeSchema } from "./common.ts";

/** `POST /v1/routers` (admin): a name for the standalone or edge router that will hold it. */
export const routerCreateSchema = z.strictObject({
  name: z
    .string()
    .trim()
    .regex(
      /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/,
      "must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
    )
    .describe("unique, also among revoked credentials, e.g. `edge-eu` or `router-1`"),
});
export type RouterCreate = z.infer<typeof routerCreateSchema>;

/** A router credential's public record; `token` is present only in the reply that created it. */
export const routerInfoSchema = z.object({
  id: z.string(),
  name: z.string(),
  /** The first characters of the token (`fr_…`), to tell credentials apart. */
  prefix: z.string(),
  created_at: isoTimeSchema,
  /** When a router last presented it (updated at most once a minute). */
  last_used_at: isoTimeSchema.nullable(),
  revoked_at: isoTimeSchema.nullable(),
});
export type RouterInfo = z.infer<typeof routerInfoSchema>;

export const routerCreatedSchema = routerInfoSchema.extend({
  token: z.string().describe("the credential (`fr_…`): set it as the router's ROUTER_TOKEN"),
});
export type RouterCreated = z.infer<typeof routerCreatedSchema>;

/** `GET /v1/routers` (admin): every credential, revoked ones included, never the token. */
export const routerListSchema = z.object({ routers: z.array(routerInfoSchema) });
export type RouterList = z.infer<typeof routerListSchema>;

/**
 * The path of `DELETE /v1/routers/{id}`: a credential id as `POST /v1/routers` returns it
 * (`rtr_` and URL-safe base64). Anything else is refused before it reaches the database.
 */
export const routerIdParamsSchema = z.object({
  id: z
    .string()
    .regex(
      /^rtr_[\w-]{1,64}$/,
      "a router credential id is `rtr_` and letters, digits, '_' or '-' (GET /v1/routers lists them)",
    ),
});
