import { z } from "zod";
import { forbiddenHostReason } from "../kit/ip.ts";

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

/**
 * A URL a worker advertises (`worker_url`, `public_worker_url`): what the manager and the
 * routers will dial with credentials, so it is held to more than `baseUrlSchema`: at most
 * 2,048 characters; `http` or `https`; no userinfo; no query or fragment, not even an empty
 * `?` or `#` (with one, `{url}/proxy/...` would lose its path); a path prefix of plain
 * segments at most; never a link-local or cloud-metadata address in any spelling (the URL
 * parser turns `2852039166`, `0xa9fea9fe` and `::ffff:a9fe:a9fe` into forms we check).
 * Normalised: lower-case scheme and host, default port dropped, no trailing slash.
 */
export const workerUrlSchema = z
  .string()
  .trim()
  .max(2048, "must be at most 2,048 characters")
  .transform((value, ctx) => {
    const problem = workerUrlProblem(value);
    if (problem) {
      ctx.addIssue({ code: "custom", message: problem });
      return z.NEVER;
    }
    return normalizeBaseUrl(value);
  });

/** Why `value` may not be advertised as a worker URL, or undefined when it may. */
export function workerUrlProblem(value: string): string | undefined {
  if (!URL.canParse(value)) return "must be an absolute http(s) URL such as https://host:8443";
  const url = new URL(value);
  if (url.protocol !== "http:" && url.protocol !== "https:") return "must use http or https";
  if (url.username !== "" || url.password !== "") return "must not carry a user name or password";
  if (value.includes("?") || value.includes("#")) return "must not have a query or fragment";
  const path = url.pathname;
  const dotSegment = /(^|\/)\.{1,2}(\/|$)/;
  if (
    !/^[A-Za-z0-9._~/-]*$/.test(path) ||
    path.includes("//") ||
    value.includes("%") ||
    dotSegment.test(value.replace(/^[a-z]+:\/\//i, ""))
  )
    return "may only have a plain path prefix (letters, digits, '.', '_', '~', '-', '/')";
  const forbidden = forbiddenHostReason(url.hostname);
  if (forbidden) return `must not point at ${forbidden} (${url.hostname})`;
  return undefined;
}

/** `HTTP://Host:80/p/` → `http://host/p`: one spelling per URL, so comparisons mean something. */
export function normalizeBaseUrl(value: string): string {
  return new URL(value).href.replace(/\/+$/, "");
}

export const isoTimeSchema = z.iso.datetime({ offset: true });

/** The longest context (`max_model_len`) the manager accepts for a model: 2^24 tokens. */
export const maxContextTokens = 16_777_216;

export const portSchema = z.number().int().min(1).max(65535);

/** GPU indices as nvidia-smi numbers them (PCI bus order); never UUIDs, which crash vLLM. */
export const gpuIdsSchema = z
  .array(z.number().int().min(0).max(1023))
  .max(64)
  .refine((ids) => new Set(ids).size === ids.length, "must not repeat a GPU id");

/** vLLM's `--dtype` values; also the `models.dtype` column's type. */
export const dtypes = ["auto", "half", "float16", "bfloat16", "float", "float32"] as const;
export const dtypeSchema = z.enum(dtypes);
