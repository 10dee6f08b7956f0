import { z } from "zod";
import { isoTimeSchema } from "./common.ts";

/** `POST /v1/keys` (admin). */
export const apiKeyCreateSchema = z.strictObject({
  name: z.string().trim().min(1).max(128).default("default"),
});
export type ApiKeyCreate = z.infer<typeof apiKeyCreateSchema>;

/** An API key's public record; `key` is present only in the reply that created it. */
export const apiKeyInfoSchema = z.object({
  id: z.string(),
  name: z.string(),
  prefix: z.string(),
  created_at: isoTimeSchema,
  revoked_at: isoTimeSchema.nullable(),
});
export type ApiKeyInfo = z.infer<typeof apiKeyInfoSchema>;

export const apiKeyCreatedSchema = apiKeyInfoSchema.extend({ key: z.string() });
export type ApiKeyCreated = z.infer<typeof apiKeyCreatedSchema>;

/** `GET /v1/keys` (admin): every key, revoked ones included, never the key itself. */
export const apiKeyListSchema = z.object({ keys: z.array(apiKeyInfoSchema) });
export type ApiKeyList = z.infer<typeof apiKeyListSchema>;

/**
 * The path of `DELETE /v1/keys/{id}`: a key id as `POST /v1/keys` returns it (`key_` and
 * URL-safe base64). Anything else is refused before it reaches the database.
 */
export const apiKeyIdParamsSchema = z.object({
  id: z
    .string()
    .regex(
      /^key_[\w-]{1,64}$/,
      "an API key id is `key_` and letters, digits, '_' or '-' (GET /v1/keys lists them)",
    ),
});
