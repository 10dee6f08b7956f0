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

/** One request on its own connection, as written (a head, ended by `end`); the response as parsed. */
async function exchange(url: string, head: string, end = "\r\n") {
  const client = await openRaw(url);
  await write(client.socket, `${head}${end}`);
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

describe("the Host header on a manager with tokens", () => {
  let database: TestDatabase;
  let url: string;
  const admin = "host-check-admin-token";

  beforeAll(async () => {
    database = await createTestDatabase();
    const manager = await startManager({
      database,
      env: { ADMIN_TOKEN: admin, FLEET_TOKEN: "host-check-fleet-token" },
    });
    url = manager.url;
  });
  afterAll(async () => {
    await stopAll();
    await database?.destroy();
  });

  test("any name is served; one the URL parser refuses is 400 where a handler builds on it, never 500", async () => {
    const body = '{"worker_id":"w1"}';
    const installCommand = (host: string) =>
      exchange(
        url,
        `POST /v1/workers/install-command HTTP/1.1\r\nHost: ${host}\r\nAuthorization: Bearer ${admin}\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`,
        "",
      );
    const named = await installCommand("fleet.example:18000");
    expect(named.status).toBe(200);
    expect((named.body as { manager_url: string }).manager_url).toBe("http://fleet.example:18000");
    for (const host of ["x:99999", "[::"]) {
      expect({ host, status: (await installCommand(host)).status }).toEqual({ host, status: 400 });
      for (const path of ["/", "/login"]) {
        const page = await exchange(
          url,
          `GET ${path} HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n`,
        );
        expect({ host, path, served: page.status > 0 && page.status < 500 }).toEqual({
          host,
          path,
          served: true,
        });
      }
    }
  });
});
