import { z } from "zod";

/** A model alias: what clients put in `model` and what the `/proxy/{alias}` path carries. */
export const aliasSchema = z
  .string()
  .regex(
    /^[a-zA-Z0-9][a-zA-Z0-9._-]{0,63}$/,
    "must be 1-64 characters of letters, digits, '.', '_' or '-', starting with a letter or digit",
  );

/** A worker id: stable per host, chosen by the operator (defaults to the host name). */
export const workerIdSchema = z
  .string()
  .regex(
    /^[a-zA-Z0-9][a-zA-Z0-9._:-]{0,127}$/,
    "must be 1-128 characters of letters, digits, '.', '_', ':' or '-', starting with a letter or digit",
  );

/**
 * An http(s) base URL with no trailing slash, query or fragment. Trailing slashes are
 * removed so that `${url}/proxy/...` never produces `//proxy` (a common port-forwarding
 * misconfiguration: `PUBLIC_URL=https://host:8443/`).
 */
export const baseUrlSchema = z
  .string()
  .trim()
  .refine(
    isPlainBaseUrl,
    "must be an http(s) base URL such as https://host:8443, without query, fragment or credentials",
  )
  .transform((value) => value.replace(/\/+$/, ""));

function isPlainBaseUrl(value: string): boolean {
  if (!URL.canParse(value)) return false;
  const url = new URL(value);
  return (
    (url.protocol === "http:" || url.protocol === "https:") &&
    url.hostname !== "" &&
    url.search === "" &&
    url.hash === "" &&
    url.username === "" &&
    url.password === ""
  );
}

export const isoTimeSchema = z.iso.datetime({ offset: true });

export const portSchema = z.number().int().min(1).max(65535);

/** GPU indices as nvidia-smi numbers them (PCI bus order); never UUIDs, which crash vLLM. */
export const gpuIdsSchema = z
  .array(z.number().int().min(0).max(1023))
  .max(64)
  .refine((ids) => new Set(ids).size === ids.length, "must not repeat a GPU id");

export const dtypeSchema = z.enum(["auto", "half", "float16", "bfloat16", "float", "float32"]);
