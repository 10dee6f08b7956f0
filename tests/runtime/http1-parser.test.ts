import { describe, expect, test } from "bun:test";
import { type ResponseHead, ResponseParser } from "../../runtime/http1-parser.ts";

type Seen = {
  heads: ResponseHead[];
  body: string;
  ends: boolean[];
  errors: string[];
};

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Feeds `wire` to a fresh parser in the given pieces and records what came out. */
function parse(pieces: Uint8Array[], method = "POST", options: { close?: boolean } = {}): Seen {
  const seen: Seen = { heads: [], body: "", ends: [], errors: [] };
  const parser = new ResponseParser(
    {
      onHead: (head) => seen.heads.push(head),
      onBody: (chunk) => {
        seen.body += decoder.decode(chunk, { stream: true });
      },
      onEnd: (reusable) => seen.ends.push(reusable),
      onError: (error) => seen.errors.push(error.message),
    },
    { maxHeadBytes: 1024, maxHeaders: 8 },
  );
  parser.expect(method);
  for (const piece of pieces) parser.push(piece);
  if (options.close) parser.closed();
  return seen;
}

/** Every way of cutting `wire` in two, plus byte by byte: framing must not care. */
function everySplit(wire: string): Uint8Array[][] {
  const bytes = encoder.encode(wire);
  const splits: Uint8Array[][] = [[bytes], [...bytes].map((byte) => Uint8Array.of(byte))];
  for (let cut = 1; cut < bytes.byteLength; cut++) {
    splits.push([bytes.slice(0, cut), bytes.slice(cut)]);
  }
  return splits;
}

describe("ResponseParser", () => {
  test("reads a Content-Length body however the bytes are split, and keeps the connection", () => {
    const wire =
      'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok":true}';
    for (const pieces of everySplit(wire)) {
      const seen = parse(pieces);
      expect(seen.errors).toEqual([]);
      expect(seen.heads).toHaveLength(1);
      expect(seen.heads[0]?.status).toBe(200);
      expect(seen.heads[0]?.statusText).toBe("OK");
      expect(seen.heads[0]?.bodyLength).toBe(11);
      expect(seen.heads[0]?.headers.get("content-type")).toBe("application/json");
      expect(seen.body).toBe('{"ok":true}');
      expect(seen.ends).toEqual([true]);
    }
  });

  test("decodes chunked bodies with extensions and trailers, split anywhere", () => {
    const wire =
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" +
      "6;name=value\r\ndata: \r\n9 \r\nhello\r\n\r\n\r\n0\r\nX-Trailer: 1\r\n\r\n";
    for (const pieces of everySplit(wire)) {
      const seen = parse(pieces);
      expect(seen.errors).toEqual([]);
      expect(seen.heads[0]?.bodyLength).toBeNull();
      expect(seen.body).toBe("data: hello\r\n\r\n");
      expect(seen.ends).toEqual([true]);
    }
  });

  test("skips informational heads and reads the final one", () => {
    const seen = parse([
      encoder.encode(
        "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
      ),
    ]);
    expect(seen.heads.map((head) => head.status)).toEqual([201]);
    expect(seen.body).toBe("ok");
  });

  test("ends at once for HEAD, 204, 304 and an empty Content-Length", () => {
    const cases: Array<[string, string]> = [
      ["HEAD", "HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n"],
      ["POST", "HTTP/1.1 204 No Content\r\n\r\n"],
      ["GET", "HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\n\r\n"],
      ["POST", "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"],
    ];
    for (const [method, wire] of cases) {
      const seen = parse([encoder.encode(wire)], method);
      expect(seen.heads[0]?.bodyless).toBe(true);
      expect(seen.ends).toEqual([true]);
      expect(seen.errors).toEqual([]);
    }
  });

  test("a body without framing runs until the server closes, and the connection is spent", () => {
    const wire = encoder.encode(
      "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\npart one, part two",
    );
    const open = parse([wire]);
    expect(open.ends).toEqual([]);
    expect(open.body).toBe("part one, part two");
    const closed = parse([wire], "POST", { close: true });
    expect(closed.ends).toEqual([false]);
    expect(closed.heads[0]?.keepAlive).toBe(false);
  });

  test("Connection: close and HTTP/1.0 responses are not reused", () => {
    const close = parse([
      encoder.encode("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx"),
    ]);
    expect(close.ends).toEqual([false]);
    const http10 = parse([encoder.encode("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx")]);
    expect(http10.ends).toEqual([false]);
    const http10KeepAlive = parse([
      encoder.encode("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\nx"),
    ]);
    expect(http10KeepAlive.ends).toEqual([true]);
  });

  test("a repeated Content-Length with one value is accepted", () => {
    const seen = parse([
      encoder.encode("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok"),
    ]);
    expect(seen.errors).toEqual([]);
    expect(seen.body).toBe("ok");
  });

  test("refuses a head larger than the limit", () => {
    const seen = parse([encoder.encode(`HTTP/1.1 200 OK\r\nX-Big: ${"a".repeat(2000)}`)]);
    expect(seen.errors).toEqual(["response head over 1024 bytes"]);
    expect(seen.heads).toEqual([]);
  });

  test("refuses more header fields than the limit, however small each is", () => {
    const fields = (count: number) =>
      Array.from({ length: count }, (_, index) => `X-${index}: v\r\n`).join("");
    const flood = parse([encoder.encode(`HTTP/1.1 200 OK\r\n${fields(9)}\r\n`)]);
    expect(flood.errors).toEqual(["response head has more than 8 header fields"]);
    expect(flood.heads).toEqual([]);
    const atLimit = parse([
      encoder.encode(`HTTP/1.1 200 OK\r\n${fields(7)}Content-Length: 2\r\n\r\nok`),
    ]);
    expect(atLimit.errors).toEqual([]);
    expect(atLimit.body).toBe("ok");
  });

  test("a close before the response ends is an error, not a short body", () => {
    const midBody = parse(
      [encoder.encode("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")],
      "POST",
      { close: true },
    );
    expect(midBody.body).toBe("abc");
    expect(midBody.ends).toEqual([]);
    expect(midBody.errors).toEqual(["connection closed before the response ended"]);
    const beforeHead = parse([], "POST", { close: true });
    expect(beforeHead.errors).toEqual(["connection closed before the response ended"]);
  });

  test("carries a second response on the same parser after expect()", () => {
    const seen: string[] = [];
    const ends: boolean[] = [];
    const parser = new ResponseParser(
      {
        onHead: (head) => seen.push(String(head.status)),
        onBody: (chunk) => seen.push(decoder.decode(chunk)),
        onEnd: (reusable) => ends.push(reusable),
        onError: (error) => seen.push(`error: ${error.message}`),
      },
      { maxHeadBytes: 1024, maxHeaders: 8 },
    );
    parser.expect("POST");
    parser.push(encoder.encode("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none"));
    parser.expect("POST");
    parser.push(
      encoder.encode(
        "HTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\n\r\n3\r\ntwo\r\n0\r\n\r\n",
      ),
    );
    expect(seen).toEqual(["200", "one", "503", "two"]);
    expect(ends).toEqual([true, true]);
  });
});

/**
 * Wire conformance (RFC 9112): what the client accepts and what it refuses, one row per rule.
 * Every row is fed whole, byte by byte, and cut in two at every position; the outcome must
 * not depend on how the bytes arrive. A refused answer reports its error once and never ends
 * (so the connection is discarded, never reused).
 */
type Row = {
  rule: string;
  wire: string;
  method?: string;
  /** The server closes after `wire`. */
  close?: boolean;
} & (
  | { body: string; reusable: boolean; status?: number }
  | {
      error: string;
      /** The answer was complete before the violation (the client drops the connection). */
      ended?: boolean;
    }
);

const TE = "Transfer-Encoding: chunked\r\n";
const rows: Row[] = [
  // Accepted.
  {
    rule: "Content-Length body",
    wire: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    body: "ok",
    reusable: true,
  },
  {
    rule: "chunked, hex digits in either case",
    wire: `HTTP/1.1 200 OK\r\n${TE}\r\na\r\n0123456789\r\nA\r\nabcdefghij\r\n0\r\n\r\n`,
    body: "0123456789abcdefghij",
    reusable: true,
  },
  {
    rule: "chunked is case-insensitive",
    wire: "HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    body: "ok",
    reusable: true,
  },
  {
    rule: "whitespace after the chunk size, and extensions",
    wire: `HTTP/1.1 200 OK\r\n${TE}\r\n2 \t;a=b;c\r\nok\r\n2;q="x y"\r\n!!\r\n0\r\n\r\n`,
    body: "ok!!",
    reusable: true,
  },
  {
    rule: "trailers are read and dropped",
    wire: `HTTP/1.1 200 OK\r\n${TE}\r\n2\r\nok\r\n0\r\nX-Checksum: 1\r\nX-Other: 2\r\n\r\n`,
    body: "ok",
    reusable: true,
  },
  {
    rule: "header whitespace is SP and HTAB, trimmed",
    wire: "HTTP/1.1 200 OK\r\nX-A:\t a b \t\r\nContent-Length: 0\r\n\r\n",
    body: "",
    reusable: true,
  },
  {
    rule: "status line without a reason phrase",
    wire: "HTTP/1.1 204\r\n\r\n",
    body: "",
    reusable: true,
    status: 204,
  },
  {
    rule: "informational heads are skipped",
    wire: "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 1\r\n\r\nx",
    body: "x",
    reusable: true,
    status: 201,
  },
  {
    rule: "HEAD has no body whatever its length says",
    method: "HEAD",
    wire: "HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n",
    body: "",
    reusable: true,
  },
  {
    rule: "304 has no body",
    method: "GET",
    wire: "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
    body: "",
    reusable: true,
  },
  {
    rule: "a repeated Content-Length with one value",
    wire: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
    body: "ok",
    reusable: true,
  },
  {
    rule: "Connection: close is not reused",
    wire: "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx",
    body: "x",
    reusable: false,
  },
  {
    rule: "HTTP/1.0 is not reused without keep-alive",
    wire: "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx",
    body: "x",
    reusable: false,
  },
  {
    rule: "no framing: the body runs until close",
    wire: "HTTP/1.1 200 OK\r\n\r\nall of it",
    close: true,
    body: "all of it",
    reusable: false,
  },

  // Refused: framing that two parsers could read two ways.
  {
    rule: "Transfer-Encoding and Content-Length together",
    wire: `HTTP/1.1 200 OK\r\n${TE}Content-Length: 7\r\n\r\n2\r\nok\r\n0\r\n\r\n`,
    error: "both Transfer-Encoding and Content-Length",
  },
  {
    rule: "Content-Length and Transfer-Encoding together",
    wire: `HTTP/1.1 200 OK\r\nContent-Length: 7\r\n${TE}\r\n2\r\nok\r\n0\r\n\r\n`,
    error: "both Transfer-Encoding and Content-Length",
  },
  {
    rule: "a transfer coding other than chunked",
    wire: "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxx",
    error: "unsupported Transfer-Encoding",
  },
  {
    rule: "chunked after another coding",
    wire: "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    error: "unsupported Transfer-Encoding",
  },
  {
    rule: "chunked twice",
    wire: `HTTP/1.1 200 OK\r\n${TE}${TE}\r\n0\r\n\r\n`,
    error: "unsupported Transfer-Encoding",
  },
  {
    rule: "Content-Length values that differ",
    wire: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
    error: "invalid Content-Length",
  },
  {
    rule: "a Content-Length list that differs",
    wire: "HTTP/1.1 200 OK\r\nContent-Length: 2, 3\r\n\r\nok",
    error: "invalid Content-Length",
  },
  {
    rule: "a negative Content-Length",
    wire: "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    error: "invalid Content-Length",
  },
  {
    rule: "a signed Content-Length",
    wire: "HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok",
    error: "invalid Content-Length",
  },
  {
    rule: "a hex Content-Length",
    wire: "HTTP/1.1 200 OK\r\nContent-Length: 0x2\r\n\r\nok",
    error: "invalid Content-Length",
  },
  {
    rule: "an empty Content-Length",
    wire: "HTTP/1.1 200 OK\r\nContent-Length:\r\n\r\n",
    error: "invalid Content-Length",
  },

  // Refused: chunk lines.
  {
    rule: "a bare CR inside a chunk-size line",
    wire: `HTTP/1.1 200 OK\r\n${TE}\r\n2\r3\r\nok\r\n0\r\n\r\n`,
    error: "bare CR in chunk line",
  },
  {
    rule: "a bare CR ending a chunk-size line",
    wire: `HTTP/1.1 200 OK\r\n${TE}\r\n2\rok\r\n0\r\n\r\n`,
    error: "bare CR in chunk line",
  },
  {
    rule: "a bare CR inside a chunk extension",
    wire: `HTTP/1.1 200 OK\r\n${TE}\r\n2;a\rb\r\nok\r\n0\r\n\r\n`,
    error: "bare CR in chunk line",
  },
  {
    rule: "a bare LF ending a chunk-size line",
    wire: `HTTP/1.1 200 OK\r\n${TE}\r\n2\nok\r\n0\r\n\r\n`,
    error: "bare LF in chunk line",
  },
  {
    rule: "whitespace before the chunk size",
    wire: `HTTP/1.1 200 OK\r\n${TE}\r\n 2\r\nok\r\n0\r\n\r\n`,
    error: "bad chunk size",
  },
  {
    rule: "an extension without a size",
    wire: `HTTP/1.1 200 OK\r\n${TE}\r\n;a\r\n`,
    error: "bad chunk size",
  },
  {
    rule: "an empty chunk-size line",
    wire: `HTTP/1.1 200 OK\r\n${TE}\r\n\r\n`,
    error: "bad chunk size",
  },
  {
    rule: "digits after whitespace in the size",
    wire: `HTTP/1.1 200 OK\r\n${TE}\r\n1 2\r\n`,
    error: "bad chunk size",
  },
  {
    rule: "a chunk size that is not hex",
    wire: `HTTP/1.1 200 OK\r\n${TE}\r\nzz\r\n`,
    error: "bad chunk size",
  },
  {
    rule: "a signed chunk size",
    wire: `HTTP/1.1 200 OK\r\n${TE}\r\n-2\r\n`,
    error: "bad chunk size",
  },
  {
    rule: "a chunk size past 12 hex digits",
    wire: `HTTP/1.1 200 OK\r\n${TE}\r\n1000000000000\r\n`,
    error: "chunk too large",
  },
  {
    rule: "chunk data not followed by CRLF",
    wire: `HTTP/1.1 200 OK\r\n${TE}\r\n2\r\nokXX`,
    error: "chunk not followed by CRLF",
  },
  {
    rule: "a folded trailer line",
    wire: `HTTP/1.1 200 OK\r\n${TE}\r\n0\r\nX-A: 1\r\n folded\r\n\r\n`,
    error: "malformed trailer line",
  },
  {
    rule: "a bare LF in the trailers",
    wire: `HTTP/1.1 200 OK\r\n${TE}\r\n0\r\nX-A: 1\n\r\n`,
    error: "bare LF in trailer line",
  },

  // Refused: the head.
  { rule: "not HTTP at all", wire: "SSH-2.0-OpenSSH_9.6\r\n\r\n", error: "malformed status line" },
  {
    rule: "HTTP/2 on an HTTP/1.1 connection",
    wire: "HTTP/2 200 OK\r\n\r\n",
    error: "malformed status line",
  },
  { rule: "a two-digit status", wire: "HTTP/1.1 20 OK\r\n\r\n", error: "malformed status line" },
  {
    rule: "a status past 599",
    wire: "HTTP/1.1 700 Whatever\r\n\r\n",
    error: "malformed status line",
  },
  {
    rule: "a bare CR in the reason phrase",
    wire: "HTTP/1.1 200 O\rK\r\nContent-Length: 0\r\n\r\n",
    error: "malformed status line",
  },
  {
    rule: "whitespace before the status line",
    wire: " HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    error: "malformed status line",
  },
  {
    rule: "a switch of protocols",
    wire: "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
    error: "unexpected protocol switch",
  },
  {
    rule: "leading whitespace on the first header line",
    wire: "HTTP/1.1 200 OK\r\n Content-Length: 2\r\n\r\nok",
    error: "malformed header line",
  },
  {
    rule: "a folded header line",
    wire: "HTTP/1.1 200 OK\r\nX-A: 1\r\n\tmore\r\nContent-Length: 0\r\n\r\n",
    error: "malformed header line",
  },
  {
    rule: "whitespace before the colon",
    wire: "HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok",
    error: "malformed header line",
  },
  {
    rule: "a header line without a colon",
    wire: "HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
    error: "malformed header line",
  },
  {
    rule: "an empty header name",
    wire: "HTTP/1.1 200 OK\r\n: value\r\n\r\n",
    error: "malformed header line",
  },
  {
    rule: "a bare CR in a header value",
    wire: "HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 0\r\n\r\n",
    error: "malformed header value",
  },
  {
    rule: "a bare LF in a header value",
    wire: "HTTP/1.1 200 OK\r\nX-A: a\nContent-Length: 0\r\n\r\n",
    error: "malformed header value",
  },
  {
    rule: "a NUL in a header value",
    wire: "HTTP/1.1 200 OK\r\nX-A: a\u0000b\r\nContent-Length: 0\r\n\r\n",
    error: "malformed header value",
  },

  // Refused: the connection's state.
  {
    rule: "bytes after the response",
    wire: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n",
    error: "unexpected bytes after the response",
    ended: true,
  },
  {
    rule: "a close before the declared length",
    wire: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nok",
    close: true,
    error: "connection closed before the response ended",
  },
  {
    rule: "a close before the last chunk",
    wire: `HTTP/1.1 200 OK\r\n${TE}\r\n2\r\nok\r\n`,
    close: true,
    error: "connection closed before the response ended",
  },
];

describe("ResponseParser wire conformance", () => {
  for (const row of rows) {
    test(`${"error" in row ? "refuses" : "accepts"} ${row.rule}`, () => {
      for (const pieces of everySplit(row.wire)) {
        const seen = parse(pieces, row.method ?? "POST", { close: row.close });
        if ("error" in row) {
          expect(seen.errors).toEqual([row.error]);
          // Otherwise never ended: the client discards the connection instead of reusing it.
          expect(seen.ends).toEqual(row.ended ? [true] : []);
        } else {
          expect(seen.errors).toEqual([]);
          expect(seen.body).toBe(row.body);
          expect(seen.ends).toEqual([row.reusable]);
          if (row.status !== undefined) expect(seen.heads[0]?.status).toBe(row.status);
        }
      }
    });
  }
});
