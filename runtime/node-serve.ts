import type { ServerOptions } from "node:http";
import type { Duplex } from "node:stream";
import type { ClientLimits } from "../kit/client-limits.ts";
import { errorBody } from "../protocol/errors.ts";

/**
 * `node:http` server options for the client limits (docs/operations.md "Slow clients"), for
 * `@hono/node-server`'s `serverOptions`. Node enforces each itself:
 * - `headersTimeout`: the request line and headers within HEADER_TIMEOUT_S (also a new
 *   connection that sends nothing);
 * - `requestTimeout`: the whole request received, a backstop a little past the app's own
 *   BODY_TIMEOUT_S (which answers 408 in OpenAI's shape first, and covers only the bodies the
 *   router reads);
 * - `keepAliveTimeout`: an idle connection between requests. A response in progress is never
 *   cut: the socket's own inactivity timeout stays off (Node's default), so a stream may
 *   pause between tokens for as long as the router's IDLE_TIMEOUT_MS allows.
 * Node checks the first two every `connectionsCheckingInterval` (30 s by default; 1 s here).
 */
export function nodeServerOptions(limits: ClientLimits): ServerOptions {
  return {
    headersTimeout: limits.headerTimeoutMs,
    requestTimeout: limits.headerTimeoutMs + limits.bodyTimeoutMs + 5000,
    keepAliveTimeout: limits.keepAliveS * 1000,
    connectionsCheckingInterval: Math.min(1000, limits.headerTimeoutMs),
  };
}

/**
 * Node's `clientError` answers, in OpenAI's error shape where Node would answer bare: a
 * request whose headers or body came too slowly (408), headers too large (431), anything the
 * parser refused (400). A socket that already wrote something, or is gone, is only closed.
 */
export function answerClientError(error: Error & { code?: string }, socket: Duplex): void {
  const written = (socket as Duplex & { bytesWritten?: number }).bytesWritten ?? 0;
  if (socket.writable && written === 0) {
    const [status, reason, code, message] =
      error.code === "ERR_HTTP_REQUEST_TIMEOUT"
        ? [408, "Request Timeout", "request_timeout", "the request did not arrive in time"]
        : error.code === "HPE_HEADER_OVERFLOW"
          ? [
              431,
              "Request Header Fields Too Large",
              "headers_too_large",
              "request headers are too large",
            ]
          : [400, "Bad Request", "invalid_request", "malformed HTTP request"];
    const body = JSON.stringify(errorBody({ message, status, code }));
    socket.end(
      `HTTP/1.1 ${status} ${reason}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`,
    );
    return;
  }
  socket.destroy();
}
