import { afterAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { existsSync, mkdtempSync, readFileSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { CredentialsFile } from "../../agent/lib/credentials.ts";
import { eventually } from "../../devkit/net.ts";
import { stopAll } from "../../devkit/proc.ts";
import { call, StubManager, simPath, startAgent } from "./helpers.ts";

// Real processes on a shared 2-core machine: give each test room (bunfig's timeout is not applied).
setDefaultTimeout(30_000);

const joinToken = "identity-test-join-token";
const managers: StubManager[] = [];

async function stubManager(): Promise<StubManager> {
  const manager = await new StubManager(joinToken).start();
  managers.push(manager);
  return manager;
}

afterAll(async () => {
  await stopAll();
  await Promise.all(managers.map((m) => m.stop()));
});

const dataDir = () => mkdtempSync(join(tmpdir(), "agent-identity-"));
const readFile = (dir: string) =>
  JSON.parse(readFileSync(join(dir, "credentials.json"), "utf8")) as CredentialsFile;
const env = (manager: StubManager, workerId: string, dir: string, extra = {}) => ({
  WORKER_ID: workerId,
  WORKER_HOST: "127.0.0.1",
  MANAGER_URL: manager.url,
  FLEET_TOKEN: joinToken,
  AGENT_DATA_DIR: dir,
  PATH: simPath,
  ...extra,
});

describe("agent identity", () => {
  test("joins once, keeps its pair in a 0600 file, and after a restart registers with it (same identity)", async () => {
    const manager = await stubManager();
    const dir = dataDir();
    const agent = await startAgent(env(manager, "ident-1", dir));
    await eventually(() => manager.registrations[0], { what: "the join" });
    expect(manager.registrations[0]?.authorization).toBe(`Bearer ${joinToken}`);
    const issued = manager.current("ident-1");
    await eventually(() => existsSync(join(dir, "credentials.json")), { what: "the file" });
    expect(statSync(join(dir, "credentials.json")).mode & 0o777).toBe(0o600);
    expect(readFile(dir)).toEqual({
      worker_id: "ident-1",
      manager_url: manager.url,
      worker_credential: issued?.worker_credential ?? "",
      agent_token: issued?.agent_token ?? "",
    });

    // The agent credential opens its API and /proxy; the join token opens nothing.
    const agentToken = issued?.agent_token;
    expect((await call(`${agent.url}/v1/instances`, { token: agentToken })).status).toBe(200);
    for (const path of ["/v1/instances", "/proxy/x/v1/models"]) {
      const refused = await call(`${agent.url}${path}`, { token: joinToken });
      expect({ path, status: refused.status }).toEqual({ path, status: 401 });
    }
    const health = await call<Record<string, unknown>>(`${agent.url}/health`, {
      token: agentToken,
    });
    expect(health.json).toEqual({ status: "ok", worker_id: "ident-1", authenticated: true });
    expect(
      (await call<Record<string, unknown>>(`${agent.url}/health`, { token: joinToken })).json,
    ).toEqual({
      status: "ok",
    });
    await agent.stop();

    const restarted = await startAgent(env(manager, "ident-1", dir));
    await eventually(() => manager.registrations[1], { what: "the second registration" });
    expect(manager.registrations[1]?.authorization).toBe(`Bearer ${issued?.worker_credential}`);
    expect(manager.issued).toHaveLength(1);
    expect((await call(`${restarted.url}/v1/instances`, { token: agentToken })).status).toBe(200);
    await restarted.stop();
  });

  test("once joined it needs no join token: restarted without FLEET_TOKEN it keeps its identity and stays closed", async () => {
    const manager = await stubManager();
    const dir = dataDir();
    const agent = await startAgent(env(manager, "ident-6", dir));
    const issued = await eventually(() => manager.current("ident-6"), { what: "the join" });
    await eventually(() => existsSync(join(dir, "credentials.json")), { what: "the file" });
    await agent.stop();
    const restarted = await startAgent(env(manager, "ident-6", dir, { FLEET_TOKEN: "" }));
    await eventually(() => manager.registrations[1], { what: "the second registration" });
    expect(manager.registrations[1]?.authorization).toBe(`Bearer ${issued.worker_credential}`);
    expect(restarted.output()).not.toContain("FLEET_TOKEN is not set");
    expect((await call(`${restarted.url}/v1/instances`)).status).toBe(401);
    const withCredential = await call(`${restarted.url}/v1/instances`, {
      token: issued.agent_token,
    });
    expect(withCredential.status).toBe(200);
    await restarted.stop();
  });

  test("a credentials file of another worker or manager is ignored; the agent joins as itself", async () => {
    const manager = await stubManager();
    const dir = dataDir();
    const first = await startAgent(env(manager, "someone-else", dir));
    await eventually(() => manager.current("someone-else"), { what: "the first join" });
    await first.stop();
    const agent = await startAgent(env(manager, "ident-2", dir));
    await eventually(() => manager.current("ident-2"), { what: "its own join" });
    expect(agent.output()).toContain("credentials file not used");
    expect(manager.registrations.at(-1)?.authorization).toBe(`Bearer ${joinToken}`);
    await eventually(() => readFile(dir).worker_id === "ident-2", { what: "the file replaced" });
    await agent.stop();
  });

  test("when the manager refuses its stored credential (removed, or a reset database) it joins again as a new identity", async () => {
    const manager = await stubManager();
    const dir = dataDir();
    const agent = await startAgent(env(manager, "ident-3", dir));
    await eventually(() => manager.current("ident-3"), { what: "the join" });
    const old = manager.current("ident-3");
    manager.forgetCredentials();
    manager.forgetWorker = true;
    await eventually(() => manager.issued.length === 2, { what: "a second join" });
    const fresh = manager.current("ident-3");
    expect(fresh?.worker_credential).not.toBe(old?.worker_credential);
    await agent.waitFor("joining again with FLEET_TOKEN");
    await eventually(() => readFile(dir).agent_token === fresh?.agent_token, {
      what: "the new pair stored",
    });
    await eventually(
      async () =>
        (await call(`${agent.url}/v1/instances`, { token: fresh?.agent_token })).status === 200,
      { what: "the new agent credential in use" },
    );
    expect((await call(`${agent.url}/v1/instances`, { token: old?.agent_token })).status).toBe(401);
    await agent.stop();
  });

  test("a 409 on joining is logged with the way out, and retried", async () => {
    const manager = await stubManager();
    manager.conflict =
      "worker ident-4 is already registered. Its agent presents the credential in its data directory; to replace the host, remove the worker first: fleet workers rm ident-4";
    const agent = await startAgent(
      env(manager, "ident-4", dataDir(), { MANAGER_RETRY_MAX_S: "0.3" }),
    );
    await agent.waitFor("fleet workers rm ident-4");
    manager.conflict = null;
    await eventually(() => manager.current("ident-4"), { what: "the join once allowed" });
    await agent.stop();
  });

  test("a rotation: the new pair is stored and used at once; the old agent credential works only for the grace", async () => {
    const manager = await stubManager();
    const dir = dataDir();
    const agent = await startAgent(env(manager, "ident-5", dir, { AGENT_TOKEN_GRACE_S: "2" }));
    await eventually(() => manager.heartbeats.length > 0, { what: "heartbeats" });
    const old = manager.current("ident-5");
    manager.rotate("ident-5");
    await eventually(() => manager.issued.length === 2, { what: "the rotation" });
    const next = manager.current("ident-5");
    await eventually(
      () => manager.heartbeats.at(-1)?.authorization === `Bearer ${next?.worker_credential}`,
      { what: "heartbeats with the new credential" },
    );
    const file = readFile(dir);
    expect([file.worker_credential, file.agent_token, file.previous_agent_token]).toEqual([
      next?.worker_credential,
      next?.agent_token,
      old?.agent_token,
    ]);
    expect(Date.parse(file.previous_valid_until ?? "")).toBeGreaterThan(Date.now());
    const status = async (token: string | undefined) =>
      (await call(`${agent.url}/v1/instances`, { token })).status;
    expect([await status(next?.agent_token), await status(old?.agent_token)]).toEqual([200, 200]);
    await eventually(async () => (await status(old?.agent_token)) === 401, {
      what: "the old agent credential to expire",
    });
    expect(await status(next?.agent_token)).toBe(200);
    await agent.stop();
  });

  test("without FLEET_TOKEN on loopback the agent is open and stores nothing", async () => {
    const manager = await new StubManager().start();
    managers.push(manager);
    const dir = dataDir();
    const agent = await startAgent({
      WORKER_ID: "open-host",
      WORKER_HOST: "127.0.0.1",
      MANAGER_URL: manager.url,
      AGENT_DATA_DIR: dir,
      PATH: simPath,
    });
    await eventually(() => manager.heartbeats.length > 0, { what: "heartbeats" });
    expect(manager.registrations[0]?.authorization).toBeNull();
    expect((await call(`${agent.url}/v1/instances`)).status).toBe(200);
    expect((await call<Record<string, unknown>>(`${agent.url}/health`)).json).toEqual({
      status: "ok",
      worker_id: "open-host",
    });
    expect(existsSync(join(dir, "credentials.json"))).toBe(false);
    await agent.stop();
  });
});
