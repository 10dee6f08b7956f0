/**
 * Incremental parser for HTTP/1.x responses (RFC 9112), for the socket client in
 * `http1-fetch.ts`. Pure: bytes in, callbacks out, no I/O, so every framing rule is tested
 * by feeding it bytes split at every position.
 *
 *   const parser = new ResponseParser(handlers, { maxHeadBytes: 64 * 1024, maxHeaders: 100 });
 *   parser.expect("POST");       // before each request written on the connection
 *   parser.push(bytes);          // as bytes arrive; views of `bytes` reach onBody
 *   parser.closed();             // when the peer closes: ends a close-delimited body
 *
 * Bodies are framed by `Transfer-Encoding: chunked`, `Content-Length`, or the connection's
 * close. Informational (1xx) heads are skipped. Any violation calls `onError` once and the
 * parser stops; the connection must then be discarded.
 */

export type ResponseHead = {
  status: number;
  statusText: string;
  headers: Headers;
  /** Whether the body has a length or chunked framing and the server keeps the connection. */
  keepAlive: boolean;
  /** No body follows (HEAD, 204, 304, `Content-Length: 0`). */
  bodyless: boolean;
  /** The body's length when `Content-Length` frames it, else null. */
  bodyLength: number | null;
};

export type ResponseHandlers = {
  onHead(head: ResponseHead): void;
  /** A view of the pushed bytes: copy it to keep it past the current `push`. */
  onBody(chunk: Uint8Array): void;
  /** The whole response arrived; `reusable` when the connection may carry another request. */
  onEnd(reusable: boolean): void;
  onError(error: Error): void;
};

type Phase =
  | "idle"
  | "head"
  | "length"
  | "chunk-size"
  | "chunk-data"
  | "chunk-crlf"
  | "trailers"
  | "until-close"
  | "done"
  | "failed";

const CR = 13;
const LF = 10;
const maxChunkLine = 4096;
const statusLine = /^HTTP\/1\.([01]) (\d{3})(?: ([\t\x20-\x7e\x80-\xff]*))?$/;
const headerName = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
const latin1 = new TextDecoder("latin1");

export class ProtocolError extends Error {
  override name = "ProtocolError";
}

export class ResponseParser {
  private phase: Phase = "idle";
  private method = "GET";
  private pending: Uint8Array | null = null;
  private remaining = 0;
  private keepAlive = false;
  /** Chunk-size and trailer line state. */
  private lineBytes = 0;
  private sizeDigits = 0;
  private sizeDone = false;
  private sawExtension = false;
  /** The line's CR was read; only LF may follow. */
  private sawCR = false;

  constructor(
    private readonly handlers: ResponseHandlers,
    private readonly options: {
      maxHeadBytes: number;
      /** Most header fields in one head; more is refused as a flood, not buffered on. */
      maxHeaders: number;
    },
  ) {}

  /** Arms the parser for the response to a request with this method. */
  expect(method: string): void {
    this.method = method.toUpperCase();
    this.phase = "head";
    this.pending = null;
    this.remaining = 0;
    this.resetLine();
  }

  /**
   * One byte of a line that must end in CRLF: `"end"` at the LF after a CR, `"cr"` for the
   * CR itself, `"byte"` for content; a bare CR or bare LF fails the parse (`"failed"`) —
   * lenient line endings are what request smuggling is built on.
   */
  private lineEnding(byte: number, what: string): "end" | "cr" | "byte" | "failed" {
    if (this.sawCR) {
      if (byte === LF) return "end";
      this.fail(`bare CR in ${what} line`);
      return "failed";
    }
    if (byte === CR) {
      this.sawCR = true;
      return "cr";
    }
    if (byte === LF) {
      this.fail(`bare LF in ${what} line`);
      return "failed";
    }
    return "byte";
  }

  private resetLine(): void {
    this.lineBytes = 0;
    this.sizeDigits = 0;
    this.sizeDone = false;
    this.sawExtension = false;
    this.sawCR = false;
    this.remaining = 0;
  }

  /** True between `expect` and the response's end (or a failure). */
  get busy(): boolean {
    return this.phase !== "idle" && this.phase !== "done" && this.phase !== "failed";
  }

  push(bytes: Uint8Array): void {
    let at = 0;
    while (at < bytes.byteLength) {
      switch (this.phase) {
        case "head": {
          const consumed = this.parseHead(bytes, at);
          if (consumed < 0) return; // waiting for the rest of the head
          at = consumed;
          break;
        }
        case "length": {
          at = this.deliver(bytes, at);
          if (this.remaining === 0) this.end(this.keepAlive);
          break;
        }
        case "chunk-size": {
          // hex digits, optional whitespace and `;extensions`, then CRLF. No leading
          // whitespace, and a CR is always followed by LF: a bare CR or bare LF is an error
          // (lenient line endings are what request smuggling is built on).
          for (; at < bytes.byteLength; at++) {
            const byte = bytes[at] as number;
            const ending = this.lineEnding(byte, "chunk");
            if (ending === "failed") return;
            if (ending === "end") break;
            if (ending === "cr") continue;
            if (this.lineBytes++ > maxChunkLine) {
              this.fail("chunk line too long");
              return;
            }
            if (this.sawExtension) continue;
            const digit = hexValue(byte);
            if (digit >= 0 && !this.sizeDone) {
              if (this.sizeDigits++ >= 12) {
                this.fail("chunk too large");
                return;
              }
              this.remaining = this.remaining * 16 + digit;
            } else if (byte === 0x3b /* ; */ && this.sizeDigits > 0) {
              this.sawExtension = true;
            } else if ((byte === 0x20 || byte === 0x09) && this.sizeDigits > 0) {
              this.sizeDone = true;
            } else {
              this.fail("bad chunk size");
              return;
            }
          }
          if (at === bytes.byteLength) return; // the line continues in the next push
          at++;
          if (this.sizeDigits === 0) {
            this.fail("bad chunk size");
            return;
          }
          const size = this.remaining;
          this.resetLine();
          this.remaining = size;
          this.phase = size === 0 ? "trailers" : "chunk-data";
          break;
        }
        case "trailers": {
          // Trailer fields are dropped; the section ends at an empty line. Lines end in CRLF
          // and none may start with whitespace (obsolete line folding).
          for (; at < bytes.byteLength; at++) {
            const byte = bytes[at] as number;
            const ending = this.lineEnding(byte, "trailer");
            if (ending === "failed") return;
            if (ending === "end") break;
            if (ending === "cr") continue;
            if (this.lineBytes === 0 && (byte === 0x20 || byte === 0x09)) {
              this.fail("malformed trailer line");
              return;
            }
            if (this.lineBytes++ > maxChunkLine) {
              this.fail("trailer line too long");
              return;
            }
          }
          if (at === bytes.byteLength) return;
          at++;
          const empty = this.lineBytes === 0;
          this.resetLine();
          if (empty) this.end(this.keepAlive);
          break;
        }
        case "chunk-data": {
          at = this.deliver(bytes, at);
          if (this.remaining === 0) {
            this.phase = "chunk-crlf";
            this.remaining = 2;
          }
          break;
        }
        case "chunk-crlf": {
          const byte = bytes[at];
          if ((this.remaining === 2 && byte !== CR) || (this.remaining === 1 && byte !== LF)) {
            this.fail("chunk not followed by CRLF");
            return;
          }
          at++;
          if (--this.remaining === 0) {
            this.resetLine();
            this.phase = "chunk-size";
          }
          break;
        }
        case "until-close":
          this.handlers.onBody(bytes.subarray(at));
          return;
        case "idle":
        case "done":
          // Bytes nobody asked for: the connection is out of step and must not be reused.
          this.fail("unexpected bytes after the response");
          return;
        case "failed":
          return;
      }
    }
  }

  /** The peer closed the connection. */
  closed(): void {
    if (this.phase === "until-close") {
      this.end(false);
      return;
    }
    if (this.busy) this.fail("connection closed before the response ended");
  }

  /** Hands on up to `remaining` body bytes from `at`; returns the offset after them. */
  private deliver(bytes: Uint8Array, at: number): number {
    const take = Math.min(this.remaining, bytes.byteLength - at);
    this.remaining -= take;
    this.handlers.onBody(bytes.subarray(at, at + take));
    return at + take;
  }

  private end(reusable: boolean): void {
    this.phase = "done";
    this.handlers.onEnd(reusable);
  }

  private fail(message: string): void {
    this.phase = "failed";
    this.handlers.onError(new ProtocolError(message));
  }

  /** Returns the offset after the head, or -1 when more bytes are needed. */
  private parseHead(bytes: Uint8Array, at: number): number {
    let buffer = bytes.subarray(at);
    let offset = 0;
    if (this.pending) {
      const joined = new Uint8Array(this.pending.byteLength + buffer.byteLength);
      joined.set(this.pending);
      joined.set(buffer, this.pending.byteLength);
      offset = this.pending.byteLength;
      buffer = joined;
    }
    const end = findHeadEnd(buffer, Math.max(0, offset - 3));
    if (end < 0) {
      if (buffer.byteLength > this.options.maxHeadBytes) {
        this.fail(`response head over ${this.options.maxHeadBytes} bytes`);
        return bytes.byteLength;
      }
      this.pending = buffer.slice();
      return -1;
    }
    this.pending = null;
    const head = this.readHead(latin1.decode(buffer.subarray(0, end)));
    // Offset of the first byte after the blank line, in `bytes`.
    const after = at + (end + 4 - offset);
    if (!head) return bytes.byteLength;
    if (head.status < 200) return after; // 1xx: the real head follows
    this.handlers.onHead(head);
    if (head.bodyless) this.end(head.keepAlive);
    return after;
  }

  private readHead(text: string): ResponseHead | null {
    const lines = text.split("\r\n");
    const match = statusLine.exec(lines[0] ?? "");
    if (!match) {
      this.fail("malformed status line");
      return null;
    }
    const status = Number(match[2]);
    if (status === 101) {
      this.fail("unexpected protocol switch");
      return null;
    }
    if (status < 100 || status > 599) {
      this.fail("malformed status line");
      return null;
    }
    if (lines.length - 1 > this.options.maxHeaders) {
      this.fail(`response head has more than ${this.options.maxHeaders} header fields`);
      return null;
    }
    // Framing headers are picked out while scanning; the Headers object is built once.
    const pairs: Array<[string, string]> = [];
    let connection = "";
    let transferEncoding: string | null = null;
    let contentLength: string | null = null;
    for (let index = 1; index < lines.length; index++) {
      const line = lines[index] ?? "";
      const colon = line.indexOf(":");
      const name = colon > 0 ? line.slice(0, colon) : "";
      if (!headerName.test(name)) {
        this.fail("malformed header line");
        return null;
      }
      // Optional whitespace is SP and HTAB only; a CR, LF or NUL left in the value is refused
      // by Headers below.
      const value = line.slice(colon + 1).replace(/^[ \t]+|[ \t]+$/g, "");
      pairs.push([name, value]);
      const lower = name.toLowerCase();
      if (lower === "connection") connection += `${value.toLowerCase()},`;
      else if (lower === "transfer-encoding") {
        transferEncoding = transferEncoding === null ? value : `${transferEncoding}, ${value}`;
      } else if (lower === "content-length") {
        contentLength = contentLength === null ? value : `${contentLength}, ${value}`;
      }
    }
    let headers: Headers;
    try {
      headers = new Headers(pairs);
    } catch {
      this.fail("malformed header value");
      return null;
    }
    if (status < 200) {
      return { status, statusText: "", headers, keepAlive: true, bodyless: true, bodyLength: 0 };
    }

    const http10 = match[1] === "0";
    let keepAlive = http10 ? /\bkeep-alive\b/.test(connection) : !/\bclose\b/.test(connection);
    const noBody = this.method === "HEAD" || status === 204 || status === 304;
    let bodyless = noBody;
    let bodyLength: number | null = noBody ? 0 : null;
    if (noBody) {
      this.phase = "done";
    } else if (transferEncoding !== null) {
      // Both framings in one answer is how responses get smuggled (RFC 9112 §6.3): refused,
      // and the connection goes with it. We send no TE, so chunked is the only coding a
      // server may apply (§7.4); anything else would be relayed still encoded.
      if (contentLength !== null) {
        this.fail("both Transfer-Encoding and Content-Length");
        return null;
      }
      if (!/^chunked$/i.test(transferEncoding.trim())) {
        this.fail("unsupported Transfer-Encoding");
        return null;
      }
      this.resetLine();
      this.phase = "chunk-size";
    } else if (contentLength !== null) {
      // A repeated header must repeat the same value (RFC 9110 §8.6).
      const values = new Set(contentLength.split(",").map((value) => value.trim()));
      const only = values.size === 1 ? [...values][0] : undefined;
      if (only === undefined || !/^\d{1,15}$/.test(only)) {
        this.fail("invalid Content-Length");
        return null;
      }
      this.remaining = Number(only);
      this.phase = "length";
      bodyLength = this.remaining;
      bodyless = this.remaining === 0;
    } else {
      this.phase = "until-close";
      keepAlive = false;
    }
    this.keepAlive = keepAlive;
    return { status, statusText: match[3] ?? "", headers, keepAlive, bodyless, bodyLength };
  }
}

function hexValue(byte: number): number {
  if (byte >= 0x30 && byte <= 0x39) return byte - 0x30;
  if (byte >= 0x41 && byte <= 0x46) return byte - 0x37;
  if (byte >= 0x61 && byte <= 0x66) return byte - 0x57;
  return -1;
}

function findHeadEnd(buffer: Uint8Array, from: number): number {
  for (let index = buffer.indexOf(CR, from); index >= 0; index = buffer.indexOf(CR, index + 1)) {
    if (index + 3 >= buffer.byteLength) return -1;
    if (buffer[index + 1] === LF && buffer[index + 2] === CR && buffer[index + 3] === LF) {
      return index;
    }
  }
  return -1;
}
