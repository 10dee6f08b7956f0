/**
 * What the router accepts from an agent before it passes an answer on. A worker is a host
 * someone rented, not a trusted peer: a buggy engine or a hostile agent can send a status no
 * client understands, a Content-Length its body does not keep, or thousands of headers.
 * Such an answer is refused like a transport failure (502 to the client when nothing reached
 * it yet, another replica tried, counted toward the replica's ejection), never relayed.
 *
 * The limits are close to Envoy's defaults for headers (100 fields, 60 KiB; 64 KiB is what
 * the router's HTTP/1.1 client already took); vLLM and the agent send fewer than ten. On
 * Bun that client enforces the same numbers while parsing (runtime/http1-parser.ts),
 * before a flood is even buffered.
 */
import { droppedDownstream } from "./headers.ts";

/** Most header fields an agent's answer may carry. */
export const maxAnswerHeaders = 100;
/** Most bytes of header names and values an agent's answer may carry (64 KiB). */
export const maxAnswerHeaderBytes = 64 * 1024;

/**
 * The head of an agent's answer, read once: why it is refused, or else the header fields
 * that never reach the client (headers.ts `droppedDownstream`), which the response to the
 * client then drops without looking each one up.
 */
export type HeadCheck =
  | { problem: string; dropped?: undefined }
  | { problem?: undefined; dropped: readonly string[] };

const nothingDropped: HeadCheck = { dropped: [] };

export function checkHead(response: Response): HeadCheck {
  const { status } = response;
  // A fetch never hands over a 1xx: informational heads are skipped before the final one.
  if (!Number.isInteger(status) || status < 200 || status > 599) {
    return { problem: `status ${status} outside 200-599` };
  }
  let count = 0;
  let bytes = 0;
  let dropped: string[] | undefined;
  for (const [name, value] of response.headers) {
    count++;
    bytes += name.length + value.length;
    if (droppedDownstream(name)) {
      dropped ??= [];
      dropped.push(name);
    }
  }
  if (count > maxAnswerHeaders) {
    return { problem: `${count} header fields (at most ${maxAnswerHeaders})` };
  }
  if (bytes > maxAnswerHeaderBytes) {
    return { problem: `${bytes} bytes of header fields (at most ${maxAnswerHeaderBytes})` };
  }
  const length = response.headers.get("content-length");
  if (length !== null && !/^\d{1,15}$/.test(length)) {
    return { problem: `Content-Length ${JSON.stringify(length.slice(0, 64))} is not a length` };
  }
  return dropped ? { dropped } : nothingDropped;
}

/**
 * Whether a client's error says the answer broke HTTP itself (a malformed head, too many
 * headers) rather than the connection failing: the router's own client (ProtocolError),
 * undici (`UND_ERR_HEADERS_OVERFLOW`, llhttp's `HPE_*`) and Bun's fetch
 * (`Malformed_HTTP_Response`).
 */
export function malformedAnswer(error: unknown): boolean {
  for (let at: unknown = error, depth = 0; at instanceof Error && depth < 4; depth++) {
    if (at.name === "ProtocolError" || at.name === "HeadersOverflowError") return true;
    const code = (at as { code?: unknown }).code;
    if (
      typeof code === "string" &&
      (code === "UND_ERR_HEADERS_OVERFLOW" || code.startsWith("HPE_"))
    )
      return true;
    if (at.message.includes("Malformed_HTTP_Response")) return true;
    at = at.cause;
  }
  return false;
}
