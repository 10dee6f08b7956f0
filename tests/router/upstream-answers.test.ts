import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { createServer, type Server, type Socket } from "node:net";
import { type OpenTestDb, openFreshDb } from "../../devkit/db.ts";
import { metricAt } from "../../devkit/metrics.ts";
import { stopAll } from "../../devkit/proc.ts";
import { sseData } from "../../devkit/sse.ts";
import {
  addReplicas,
  type Router,
  type ServedManager,
  serveManager,
  startRouter,
} from "./fixtures.ts";

/**
 * A hostile worker: a raw TCP server on loopback standing in for an agent, answering each
 * alias with one kind of malformed HTTP (a status of 999, a Content-Length its body does not
 * keep, a flood of headers). Whatever the router's upstream client (Bun: the default `auto`,
 * its own HTTP/1.1 client alone and Bun's fetch alone; Node: undici), the client gets a 502 in OpenAI's shape when nothing
 * reached it yet, a stream that started ends with an error event and [DONE], the router
 * names the worker in its log, ejects it, and keeps serving.
 */

const runtimes = ["bun", "bun-http1", "bun-fetch", "node"] as const;

const completion = JSON.stringify({
  id: "cmpl-1",
  object: "chat.completion",
  choices: [{ index: 0, message: { role: "assistant", content: "fine" }, finish_reason: "stop" }],
  usage: { prompt_tokens: 3, completion_tokens: 1, total_tokens: 4 },
});

const headerFlood = (count: number) =>
  Array.from({ length: count }, (_, index) => `x-flood-${index}: v\r\n`).join("");

/** What the hostile worker writes for each alias, before it closes the connection. */
const answers: Record<string, string> = {
  good: `HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: ${completion.length}\r\nconnection: close\r\n\r\n${completion}`,
  "bad-status": `HTTP/1.1 999 Whatever\r\ncontent-type: application/json\r\ncontent-length: ${completion.length}\r\nconnection: close\r\n\r\n${completion}`,
  // A small JSON answer promising 1,000 bytes and sending 12: read whole, so never relayed.
  "short-body": `HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1000\r\nconnection: close\r\n\r\n{"id":"cmpl`,
  // The measured case: a length no body will keep, on an event stream that has started.
  "short-stream": `HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: 99999999999999\r\nconnection: close\r\n\r\ndata: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n`,
  // 5,000 headers (the measured flood), and 150: under undici's and Bun's own size limits.
  flood: `HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n${headerFlood(5000)}content-length: 2\r\nconnection: close\r\n\r\n{}`,
  "many-headers": `HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n${headerFlood(150)}content-length: 2\r\nconnection: close\r\n\r\n{}`,
};
const malformed = Object.keys(answers).filter((alias) => alias !== "good");

let db: OpenTestDb;
let manager: ServedManager;
let hostile: Server;
let hostileUrl: string;
const sockets = new Set<Socket>();

beforeAll(async () => {
  hostile = createServer((socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    socket.on("error", () => {});
    let head = "";
    socket.on("data", (bytes) => {
      if (head.includes("\r\n\r\n")) return;
      head += bytes.toString("latin1");
      if (!head.includes("\r\n\r\n")) return;
      const alias = /^\w+ \/proxy\/([^/]+)\//.exec(head)?.[1] ?? "";
      const answer = answers[alias] ?? "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n";
      // The stream's first event goes out before the close, in its own packets, so that the
      // router usually relays it first; a client that sees the close first answers 502.
      if (alias === "short-stream") {
        socket.write(answer);
        setTimeout(() => socket.end(), 100);
      } else {
        socket.end(answer);
      }
    });
  });
  await new Promise<void>((resolve) => hostile.listen(0, "127.0.0.1", resolve));
  const address = hostile.address();
  hostileUrl = `http://127.0.0.1:${typeof address === "object" && address ? address.port : 0}`;
  db = await openFreshDb();
  // Probes off: the hostile worker answers only /proxy, and probes are not what is measured.
  manager = await serveManager(db, { config: { probeIntervalS: 0 } });
  for (const alias of Object.keys(answers)) {
    await addReplicas(manager, alias, [{ workerId: `w-${alias}`, url: hostileUrl }]);
  }
});

afterAll(async () => {
  await stopAll();
  await manager?.close();
  for (const socket of sockets) socket.destroy();
  hostile?.close();
  await db?.destroy();
});

function start(runtime: (typeof runtimes)[number]): Promise<Router> {
  // One failure ejects: what "counted toward ejection" means, seen in one request.
  const extra = { EJECT_AFTER_FAILURES: "1" };
  if (runtime === "bun-http1") {
    return startRouter("bun", manager.url, { ...extra, UPSTREAM_CLIENT: "http1" });
  }
  if (runtime === "bun-fetch") {
    return startRouter("bun", manager.url, {
      ...extra,
      UPSTREAM_CLIENT: "fetch",
      BUN_CONFIG_MAX_HTTP_REQUESTS: "1024",
    });
  }
  return startRouter(runtime, manager.url, extra);
}

type ErrorBody = { error: { message: string; type: string; param: string | null; code: unknown } };

for (const runtime of runtimes) {
  describe(`router on ${runtime} against a hostile worker`, () => {
    let router: Router;
    beforeAll(async () => {
      router = await start(runtime);
    });

    const chat = (model: string, stream = false) =>
      fetch(`${router.url}/v1/chat/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ model, messages: [{ role: "user", content: "hi" }], stream }),
      });

    test("a bad status, a short body or a header flood is a 502 in OpenAI's shape, never relayed", async () => {
      for (const alias of ["bad-status", "short-body", "flood", "many-headers"]) {
        const response = await chat(alias);
        expect({ alias, status: response.status }).toEqual({ alias, status: 502 });
        expect(response.headers.get("x-flood-0")).toBeNull();
        const body = (await response.json()) as ErrorBody;
        expect(body.error).toMatchObject({ type: "server_error", code: "upstream_error" });
      }
    });

    test("a stream whose Content-Length lies ends with an error event and [DONE], without the lie", async () => {
      const response = await chat("short-stream", true);
      if (response.status === 502) {
        // The close arrived before the first event was relayed: nothing reached the client.
        const body = (await response.json()) as ErrorBody;
        expect(body.error).toMatchObject({ type: "server_error", code: "upstream_error" });
        return;
      }
      expect(response.status).toBe(200);
      expect(response.headers.get("content-length")).toBeNull();
      const text = await response.text();
      const events = sseData(text);
      expect(events[0]).toContain('"content":"hi"');
      expect(events.at(-1)).toBe("[DONE]");
      const error = JSON.parse(events.at(-2) ?? "{}") as ErrorBody;
      expect(error.error).toMatchObject({ type: "server_error", code: 502 });
    });

    test("each misbehaving worker is named in the log and ejected; the router keeps serving", async () => {
      for (const alias of malformed) {
        const ejections = await metricAt(router.metrics, "fleet_router_ejections_total", {
          worker_id: `w-${alias}`,
        });
        expect({ alias, ejections }).toEqual({ alias, ejections: 1 });
        expect(router.output()).toContain(`"worker_id":"w-${alias}"`);
      }
      // The malformed heads are told apart from connection failures in the log and /metrics.
      expect(router.output()).toContain('"reason":"malformed"');
      for (const alias of ["bad-status", "flood", "many-headers"]) {
        const count = await metricAt(router.metrics, "fleet_router_malformed_answers_total", {
          worker_id: `w-${alias}`,
        });
        expect({ alias, count }).toEqual({ alias, count: 1 });
      }
      // An ejected worker is not asked again: no ready replica, said so with Retry-After.
      const again = await chat("bad-status");
      expect(again.status).toBe(503);
      expect(again.headers.get("retry-after")).not.toBeNull();
      await again.body?.cancel();
      const good = await chat("good");
      expect(good.status).toBe(200);
      expect(((await good.json()) as { choices: unknown[] }).choices).toHaveLength(1);
      expect(router.proc.exitCode).toBeNull();
    });
  });
}
