import { errorResponse, quote } from "../../kit/errors.ts";
import { connectionNamedHeaders, hopByHopHeaders } from "../../kit/http-headers.ts";
import type { Logger } from "../../kit/log.ts";
import { LOAD_HEADER } from "../../protocol/load.ts";
import type { LoadMonitor } from "./load-monitor.ts";
import type { Supervisor } from "./supervisor.ts";

/** The engine paths reachable through `/proxy/{alias}/v1/...`, with the method each takes. */
const allowed: Record<string, string> = {
  "chat/completions": "POST",
  completions: "POST",
  embeddings: "POST",
  responses: "POST",
  // vLLM's pooling endpoints for rerankers (cross-encoders).
  rerank: "POST",
  score: "POST",
  models: "GET",
};

const hopByHop = [...hopByHopHeaders];

/** Seconds a client should wait before retrying an engine that is still loading. */
const retryAfterStarting = "10";

/**
 * Forwards `/proxy/{alias}/v1/{path}` to the engine on 127.0.0.1. The body passes through
 * untouched in both directions (no decompression, no re-encoding), streamed chunks are
 * forwarded as they arrive, and the client's disconnect aborts the engine request so that
 * vLLM stops generating. The client's Authorization (the fleet token) never reaches the
 * engine.
 */
export function createProxy(deps: {
  supervisor: Supervisor;
  log: Logger;
  loads?: Pick<LoadMonitor, "header"> | undefined;
}) {
  const { supervisor, log, loads } = deps;
  return async (req: Request, alias: string, path: string, search: string): Promise<Response> => {
    const method = allowed[path];
    if (method === undefined) {
      return errorResponse(
        "not_found",
        `/v1/${quote(path)} is not served through the agent's proxy`,
      );
    }
    if (req.method !== method) {
      return errorResponse("method_not_allowed", `/v1/${quote(path)} takes ${method}`, {
        headers: { allow: method },
      });
    }
    const engine = supervisor.get(alias);
    if (engine === undefined) {
      return errorResponse(
        "model_not_found",
        `The model \`${quote(alias)}\` does not exist on this worker.`,
        {
          param: "model",
        },
      );
    }
    if (engine.status !== "ready" || engine.port === null) {
      if (engine.status === "starting") {
        return errorResponse("not_ready", `The model \`${alias}\` is still starting.`, {
          headers: { "retry-after": retryAfterStarting },
        });
      }
      return errorResponse(
        "unavailable",
        `The model \`${alias}\` is ${engine.status} on this worker.`,
      );
    }

    // The incoming request is ours alone: edit its headers in place rather than copy them.
    const headers = req.headers;
    if (hasAny(headers, hopByHop)) stripHopByHop(headers);
    headers.delete("authorization");
    headers.delete("host");
    try {
      const upstream = await fetch(`http://127.0.0.1:${engine.port}/v1/${path}${search}`, {
        method,
        headers,
        body: method === "GET" ? null : req.body,
        signal: req.signal,
        redirect: "manual",
        // Pass bytes through as the engine sent them; keep the engine off any HTTP proxy.
        decompress: false,
        proxy: false,
        // No idle timeout of Bun's own (5 minutes by default): vLLM queues a request rather
        // than refuse it, and a non-streamed one sends nothing until it is done. The caller's
        // deadlines govern (the router's first byte, 10 minutes), and its disconnect aborts.
        timeout: false,
      } satisfies BunFetchRequestInit);
      // Bun pipes a fetch Response it is handed back natively; only rebuild one (a JS-level
      // stream copy) when the engine sent a header that must not cross the proxy.
      // The engine's last load rides on every answer (protocol/load.ts), so routers learn
      // it from the replies they already get. Bun's fetch headers are mutable.
      const load = loads?.header(alias);
      if (!hasAny(upstream.headers, responseHopByHop)) {
        if (load) upstream.headers.set(LOAD_HEADER, load);
        return upstream;
      }
      const responseHeaders = new Headers(upstream.headers);
      stripHopByHop(responseHeaders);
      if (load) responseHeaders.set(LOAD_HEADER, load);
      return new Response(upstream.body, {
        status: upstream.status,
        statusText: upstream.statusText,
        headers: responseHeaders,
      });
    } catch (error) {
      if (req.signal.aborted) return new Response(null, { status: 499 });
      const reason = error instanceof Error ? error.message : String(error);
      log.warn("engine unreachable", { alias, port: engine.port, reason });
      return errorResponse(
        "upstream_error",
        `The engine for \`${alias}\` did not answer: ${reason}`,
      );
    }
  };
}

/** Hop-by-hop names Bun's server would pass on; it re-frames `transfer-encoding` itself. */
const responseHopByHop = hopByHop.filter((name) => name !== "transfer-encoding");

function hasAny(headers: Headers, names: string[]): boolean {
  for (const name of names) if (headers.has(name)) return true;
  return false;
}

function stripHopByHop(headers: Headers): void {
  for (const name of connectionNamedHeaders(headers)) headers.delete(name);
  for (const name of hopByHop) headers.delete(name);
}
