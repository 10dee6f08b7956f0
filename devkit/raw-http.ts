import { connect, type Socket } from "node:net";

/**
 * A raw HTTP/1.1 client over node:net, for tests that must send what no HTTP client sends:
 * headers or bodies that trickle in or never end, connections that say nothing.
 */

/** A raw client connection: what it received, and when it was closed (ms after opening). */
export type RawClient = {
  socket: Socket;
  received(): string;
  closedAfterMs: Promise<number>;
  /** `performance.now()` when the server closed it. */
  closedAt: Promise<number>;
  isClosed(): boolean;
};

export async function openRaw(url: string): Promise<RawClient> {
  const { hostname, port } = new URL(url);
  const socket = connect(Number(port), hostname);
  const openedAt = performance.now();
  let text = "";
  let closed = false;
  socket.on("data", (chunk) => {
    text += chunk.toString("latin1");
  });
  // A refused body breaks the client's writes (EPIPE, reset): that is the server closing it.
  socket.on("error", () => {});
  const closedAt = new Promise<number>((resolve) =>
    socket.on("close", () => {
      closed = true;
      resolve(performance.now());
    }),
  );
  const closedAfterMs = closedAt.then((at) => at - openedAt);
  await new Promise<void>((resolve, reject) => {
    socket.once("connect", () => resolve());
    socket.once("error", reject);
  });
  return { socket, received: () => text, closedAfterMs, closedAt, isClosed: () => closed };
}

/** Status and JSON body of the one HTTP response in `raw` (empty when none came). */
export function parseResponse(raw: string): { status: number; headers: string; body: unknown } {
  const end = raw.indexOf("\r\n\r\n");
  if (end === -1) return { status: 0, headers: "", body: undefined };
  const head = raw.slice(0, end);
  const status = Number(head.split(" ")[1]);
  const rest = raw.slice(end + 4);
  const chunked = /transfer-encoding: chunked/i.test(head);
  const text = chunked
    ? rest.replace(/^[0-9a-f]+\r\n|\r\n[0-9a-f]+\r\n|\r\n0\r\n\r\n$/gi, "")
    : rest;
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    body = text;
  }
  return { status, headers: head.toLowerCase(), body };
}

/** Writes and resolves once the data has been handed to the kernel. */
export const write = (socket: Socket, data: string | Uint8Array) =>
  new Promise<void>((resolve) => socket.write(data, () => resolve()));
