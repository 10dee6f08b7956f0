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
    { maxHeadBytes: 1024 },
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

  test("reports each protocol violation once and stops", () => {
    const cases: Array<[string, string]> = [
      ["SSH-2.0-OpenSSH_9.6\r\n\r\n", "malformed status line"],
      ["HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "malformed header line"],
      ["HTTP/1.1 200 OK\r\n bad: folded\r\n\r\n", "malformed header line"],
      [
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
        "invalid Content-Length",
      ],
      ["HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "invalid Content-Length"],
      ["HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad chunk size"],
      ["HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1 2\r\n", "bad chunk size"],
      ["HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\r\n", "bad chunk size"],
      [
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokXX",
        "chunk not followed by CRLF",
      ],
      [
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
        "unexpected protocol switch",
      ],
      [
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA",
        "unexpected bytes after the response",
      ],
      ["HTTP/1.1 700 Whatever\r\n\r\n", "malformed status line"],
    ];
    for (const [wire, message] of cases) {
      const seen = parse([encoder.encode(wire)]);
      expect(seen.errors).toEqual([message]);
    }
  });

  test("refuses a head larger than the limit", () => {
    const seen = parse([encoder.encode(`HTTP/1.1 200 OK\r\nX-Big: ${"a".repeat(2000)}`)]);
    expect(seen.errors).toEqual(["response head over 1024 bytes"]);
    expect(seen.heads).toEqual([]);
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
      { maxHeadBytes: 1024 },
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
