import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { createTestDatabase, type TestDatabase } from "../../devkit/db.ts";
import { simAgentEnv, startManager } from "../../devkit/fleet.ts";
import { freePort, waitForHttp } from "../../devkit/net.ts";
import { bunBin, startProcess, stopAll } from "../../devkit/proc.ts";
import { openRaw, parseResponse, write } from "../../devkit/raw-http.ts";

/**
 * The Host header on the Bun servers of an open fleet (no tokens, loopback only): a request
 * without a usable one is 400 before anything is routed (Bun leaves `request.url` as the bare
 * path then, and the path would be misread), and one addressed to a name that is not a
 * loopback one is 403 (a web page reaching the open API by DNS rebinding), on the manager
 * and on the agent alike.
 */

/** One request on its own connection, as written; the response as parsed. */
async function exchange(url: string, head: string) {
  const client = await openRaw(url);
  await write(client.socket, `${head}\r\n`);
  await client.closedAfterMs;
  return parseResponse(client.received());
}

describe("the Host header on an open fleet's Bun servers", () => {
  let database: TestDatabase;
  let managerUrl: string;
  let agentUrl: string;

  beforeAll(async () => {
    database = await createTestDatabase();
    const manager = await startManager({ database });
    managerUrl = manager.url;
    const port = await freePort();
    const agent = startProcess([bunBin, "agent/main.ts"], {
      env: simAgentEnv({ workerId: "host-check", port, managerUrl }),
    });
    agentUrl = `http://127.0.0.1:${port}`;
    await agent.waitFor("registered with the manager", 30_000);
    await waitForHttp(`${agentUrl}/health`);
  });
  afterAll(async () => {
    await stopAll();
    await database?.destroy();
  });

  test.each([
    ["manager", () => managerUrl],
    ["agent", () => agentUrl],
  ])(
    "the %s: 400 without a usable Host, 403 for another name, served on loopback",
    async (_, url) => {
      const base = url();
      const port = new URL(base).port;
      const statusOf = async (head: string) => {
        const { status, body } = await exchange(base, head);
        return { head, status, code: (body as { error?: { code?: string } }).error?.code };
      };
      const withHost = (host: string) =>
        `GET /health HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n`;

      expect(await statusOf("GET /health HTTP/1.0\r\n")).toMatchObject({
        status: 400,
        code: "invalid_request",
      });
      for (const host of ["a b", "host/path", ""]) {
        expect(await statusOf(withHost(host))).toMatchObject({
          status: 400,
          code: "invalid_request",
        });
      }
      for (const host of [`evil.example:${port}`, `10.0.0.5:${port}`]) {
        expect(await statusOf(withHost(host))).toMatchObject({ status: 403, code: "forbidden" });
      }
      for (const host of [`127.0.0.1:${port}`, `localhost:${port}`]) {
        expect(await statusOf(withHost(host))).toMatchObject({ status: 200 });
      }
    },
  );
});
