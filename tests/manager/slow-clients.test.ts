import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { createTestDatabase, type TestDatabase } from "../../devkit/db.ts";
import { startManager } from "../../devkit/fleet.ts";
import { metricAt } from "../../devkit/metrics.ts";
import { eventually, freePort, waitForHttp } from "../../devkit/net.ts";
import { type Service, startProcess, stopAll } from "../../devkit/proc.ts";
import { openRaw, parseResponse, write } from "../../devkit/raw-http.ts";

/**
 * The manager's port under slow clients, on Bun (`manager/main.ts`) and Node
 * (`manager/node.ts`): the mounted router refuses a body that does not arrive in time (408)
 * or does not fit in memory (503), and connections left idle after a request are closed,
 * whether that request went to the manager's own API or to the mounted router.
 */

const MiB = 1024 * 1024;
const limits = {
  BODY_TIMEOUT_S: "4",
  KEEPALIVE_TIMEOUT_S: "1",
  HEADER_TIMEOUT_S: "2",
  MAX_BODY_BYTES: String(MiB),
  MAX_BODY_MEMORY_BYTES: String(MiB),
};

const inferenceHead = (length: number) =>
  `POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: ${length}\r\n\r\n`;

async function startNodeManager(database: TestDatabase): Promise<Service & { url: string }> {
  const port = await freePort();
  // tsx as a loader (not its CLI) keeps the manager one process that stop() reaches.
  const service = startProcess(["node", "--import", "tsx", "manager/node.ts"], {
    env: { DATABASE_URL: "", ...database.env, HOST: "127.0.0.1", PORT: String(port), ...limits },
  });
  await service.waitFor("manager listening", 60_000);
  const url = `http://127.0.0.1:${port}`;
  await waitForHttp(`${url}/health`);
  return Object.assign(service, { url });
}

describe.each(["bun", "node"] as const)("the manager on %s under slow clients", (runtime) => {
  let database: TestDatabase;
  let url: string;
  let manager: Service & { url: string };

  beforeAll(async () => {
    database = await createTestDatabase();
    manager =
      runtime === "bun"
        ? await startManager({ database, env: limits })
        : await startNodeManager(database);
    url = manager.url;
  });
  afterAll(async () => {
    await stopAll();
    await database?.destroy();
  });

  test("the mounted router answers 408 to a body that stalls and 503 to one that does not fit", async () => {
    // The first client declares the whole memory cap and sends half of it.
    const holder = await openRaw(url);
    await write(holder.socket, inferenceHead(MiB));
    await write(holder.socket, new Uint8Array(MiB / 2).fill(0x20));
    await eventually(
      async () => (await metricAt(`${url}/metrics`, "fleet_router_body_bytes")) === MiB,
      { what: "the holder's declared length held" },
    );
    // Nothing is left for this one.
    const client = await openRaw(url);
    await write(client.socket, `${inferenceHead(1024)}{"model":"qwen"`);
    await client.closedAfterMs;
    const refused = parseResponse(client.received());
    expect(refused.status).toBe(503);
    expect(refused.headers).toContain("retry-after: 1");
    expect(refused.body).toMatchObject({ error: { code: "overloaded" } });

    const closedAfterMs = await holder.closedAfterMs;
    expect(closedAfterMs).toBeGreaterThanOrEqual(4000);
    const timedOut = parseResponse(holder.received());
    expect(timedOut.status).toBe(408);
    expect(timedOut.body).toMatchObject({
      error: { code: "request_timeout", type: "invalid_request_error" },
    });
  }, 60_000);

  test("a client that closes mid-upload, to the API or to the mounted router, logs no error", async () => {
    const heads = [
      "POST /v1/keys HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n",
      inferenceHead(1000),
    ];
    for (const head of heads) {
      const client = await openRaw(url);
      await write(client.socket, `${head}{"name":`);
      client.socket.destroy();
    }
    // The server has seen both go (a request after them on a new connection is answered).
    expect((await fetch(`${url}/health`)).status).toBe(200);
    await eventually(
      async () =>
        (await metricAt(`${url}/metrics`, "fleet_router_body_refusals_total", {
          reason: "incomplete",
        })) === 1,
      { what: "the router's incomplete body counted" },
    );
    expect(manager.output()).not.toContain('"level":"error"');
  });

  test("connections kept alive after an API request or an inference request are closed once idle", async () => {
    const payload = '{"model":"nothing-here","messages":[]}';
    const requests = [
      "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
      `${inferenceHead(payload.length)}${payload}`,
    ];
    for (const request of requests) {
      const client = await openRaw(url);
      await write(client.socket, request);
      await client.closedAfterMs;
      // Answered (200 / 404 model_not_found), then closed by the keep-alive timeout.
      expect([200, 404]).toContain(parseResponse(client.received()).status);
    }
    // A connection that never sends a byte goes at the header timeout.
    const silent = await openRaw(url);
    await silent.closedAfterMs;
  }, 60_000);
});
