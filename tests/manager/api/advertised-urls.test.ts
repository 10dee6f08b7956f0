import { expect, test } from "bun:test";
import { parseEnv } from "../../../kit/env.ts";
import { parseHostAllowlist } from "../../../kit/host-allowlist.ts";
import { createLogger } from "../../../kit/log.ts";
import { managerEnvSchema } from "../../../manager/env.ts";
import {
  type OpenAiError,
  plainHttpProblemText,
  type WorkerInfo,
} from "../../../protocol/index.ts";
import { gpu, registration, type TestManager } from "../helpers.ts";
import { describeApi } from "./harness.ts";

/**
 * What a worker may advertise beyond the URL syntax: never the manager's own listen address,
 * only allowed hosts when WORKER_URL_ALLOW is set, and a plain-http public URL is flagged.
 */
describeApi("manager API: what a worker may advertise", (api) => {
  const PORT = 18_123;

  const register = (
    t: TestManager,
    workerUrl: string,
    publicUrl: string | null = null,
    workerId = "w1",
  ) =>
    t.register<OpenAiError>(
      registration(workerId, workerUrl, [gpu(0)], { public_worker_url: publicUrl }),
    );

  const refusal = async (t: TestManager, workerUrl: string, publicUrl: string | null = null) => {
    const { status, body } = await register(t, workerUrl, publicUrl);
    return {
      status,
      code: body?.error?.code,
      param: body?.error?.param,
      message: body?.error?.message,
    };
  };

  test("a URL at the manager's own loopback address is refused in every spelling, naming the field", async () => {
    const t = await api.manager({ config: { host: "127.0.0.1", port: PORT } });
    for (const url of [
      `http://127.0.0.1:${PORT}`,
      `http://localhost:${PORT}`,
      `http://LOCALHOST:${PORT}/`,
      `http://[::1]:${PORT}`,
      `http://[::ffff:127.0.0.1]:${PORT}`,
      `http://127.1:${PORT}`,
      `http://2130706433:${PORT}`,
      `http://127.0.0.2:${PORT}`,
      `https://127.0.0.1:${PORT}/prefix`,
    ]) {
      const got = await refusal(t, url);
      expect({ url, ...got, message: undefined }).toEqual({
        url,
        status: 400,
        code: "invalid_request",
        param: "worker_url",
        message: undefined,
      });
      expect(got.message).toContain("this manager's own address");
    }
    // The public URL is held to the same rule, and named.
    const pub = await refusal(t, "http://127.0.0.1:6006", `http://localhost:${PORT}`);
    expect([pub.status, pub.param]).toEqual([400, "public_worker_url"]);
    // Nothing was stored.
    expect((await t.json("GET", "/v1/workers/w1")).status).toBe(404);
  });

  test("another port on loopback is fine (every test here runs on 127.0.0.1)", async () => {
    const t = await api.manager({ config: { host: "127.0.0.1", port: PORT } });
    expect((await register(t, `http://127.0.0.1:${PORT + 1}`)).status).toBe(200);
    expect((await register(t, "http://localhost:6006", `http://[::1]:${PORT - 1}`)).status).toBe(
      200,
    );
  });

  test("a manager on every interface refuses loopback and its own addresses at its port", async () => {
    const t = await api.manager({ config: { host: "0.0.0.0", port: PORT } });
    expect((await refusal(t, `http://127.0.0.1:${PORT}`)).status).toBe(400);
    expect((await refusal(t, `http://[::1]:${PORT}`)).status).toBe(400);
    // The entry reports the bound port and the host's addresses once it listens.
    t.manager.listening({ port: 443, localAddresses: ["10.1.2.3", "fe80::1", "gpu-manager"] });
    expect((await refusal(t, `http://127.0.0.1:${PORT}`)).status).toBe(200);
    for (const url of [
      "https://localhost",
      "https://10.1.2.3",
      "https://[::ffff:10.1.2.3]",
      "https://GPU-MANAGER",
      "http://10.1.2.3:443",
    ]) {
      expect({ url, ...(await refusal(t, "http://10.9.9.9:6006", url)) }).toMatchObject({
        url,
        status: 400,
        param: "public_worker_url",
      });
    }
    expect((await refusal(t, "https://10.1.2.4")).status).toBe(200);
    expect((await refusal(t, "http://10.1.2.3:6006")).status).toBe(200);
  });

  test("a manager on one address refuses that address at its port, and only that", async () => {
    const t = await api.manager({ config: { host: "10.0.0.5", port: PORT } });
    expect((await refusal(t, `http://10.0.0.5:${PORT}`)).status).toBe(400);
    expect((await refusal(t, `http://[::ffff:a00:5]:${PORT}`)).status).toBe(400);
    expect((await refusal(t, `http://10.0.0.6:${PORT}`)).status).toBe(200);
    expect((await refusal(t, `http://127.0.0.1:${PORT}`)).status).toBe(200);
  });

  test("with WORKER_URL_ALLOW set, both URLs must be on it (names, suffixes, IPs, CIDR ranges)", async () => {
    const allow = parseHostAllowlist("gpu1.example.com, .rent.example, 10.0.0.0/8, fd00::/8");
    const t = await api.manager({ config: { workerUrlAllow: allow } });
    for (const [workerUrl, publicUrl] of [
      ["http://10.1.2.3:6006", null],
      ["http://10.1.2.3:6006", "https://gpu1.example.com:8443"],
      ["http://[fd00::7]:6006", "https://u557149-9507.bjb2.rent.example:8443"],
      ["http://gpu1.example.com:6006", null],
    ] as const) {
      expect({
        workerUrl,
        publicUrl,
        status: (await register(t, workerUrl, publicUrl)).status,
      }).toEqual({
        workerUrl,
        publicUrl,
        status: 200,
      });
    }
    for (const [workerUrl, publicUrl, param] of [
      ["http://127.0.0.1:6006", null, "worker_url"],
      ["http://11.0.0.1:6006", null, "worker_url"],
      ["http://gpu2.example.com:6006", null, "worker_url"],
      ["http://10.1.2.3:6006", "https://rent.example:8443", "public_worker_url"],
      ["http://10.1.2.3:6006", "https://attacker.example:8443", "public_worker_url"],
      ["http://10.1.2.3:6006", "https://rent.example.attacker.example", "public_worker_url"],
    ] as const) {
      const got = await refusal(t, workerUrl, publicUrl);
      expect({ workerUrl, publicUrl, status: got.status, param: got.param }).toEqual({
        workerUrl,
        publicUrl,
        status: 400,
        param,
      });
      expect(got.message).toContain("WORKER_URL_ALLOW");
    }
    // A refused re-registration leaves the worker's stored URLs as they were.
    const { body } = await t.json<WorkerInfo>("GET", "/v1/workers/w1");
    expect([body.worker_url, body.public_worker_url]).toEqual([
      "http://gpu1.example.com:6006",
      null,
    ]);
  });

  test("a bad WORKER_URL_ALLOW is refused, naming the variable and the entry", () => {
    expect(() =>
      parseEnv(managerEnvSchema, { WORKER_URL_ALLOW: "10.0.0.0/8,10.0.0.0/40" }),
    ).toThrow(/WORKER_URL_ALLOW .*10\.0\.0\.0\/40/);
    expect(() => parseEnv(managerEnvSchema, { WORKER_URL_ALLOW: "https://gpu.example" })).toThrow(
      "WORKER_URL_ALLOW",
    );
    expect(parseEnv(managerEnvSchema, { WORKER_URL_ALLOW: "" }).WORKER_URL_ALLOW).toBeUndefined();
    expect(
      parseEnv(managerEnvSchema, { WORKER_URL_ALLOW: "10.0.0.0/8" }).WORKER_URL_ALLOW?.entries,
    ).toEqual(["10.0.0.0/8"]);
  });

  test("a plain-http public URL on the internet is accepted but flagged, in the log and in problems", async () => {
    const lines: string[] = [];
    const log = createLogger({
      service: "manager",
      level: "warn",
      write: (line) => lines.push(line),
    });
    const t = await api.manager({ log });
    const cases = [
      ["plain", "http://u557149-9507.bjb2.rent.example:8080", [plainHttpProblemText]],
      ["tls", "https://u557149-9507.bjb2.rent.example:8443", []],
      ["vpn", "http://100.101.102.103:6006", []],
      ["lan", "http://192.168.1.20:6006", []],
      ["none", null, []],
    ] as const;
    for (const [id, publicUrl] of cases) {
      expect((await register(t, "http://10.0.0.7:6006", publicUrl, id)).status).toBe(200);
    }
    const { body } = await t.json<{ workers: WorkerInfo[] }>("GET", "/v1/workers");
    const problems = Object.fromEntries(body.workers.map((w) => [w.worker_id, w.problems]));
    expect(problems).toEqual(Object.fromEntries(cases.map(([id, , want]) => [id, [...want]])));
    const warned = lines.map((line) => JSON.parse(line) as { msg: string; worker_id?: string });
    expect(warned.filter((l) => l.msg === plainHttpProblemText).map((l) => l.worker_id)).toEqual([
      "plain",
    ]);
  });
});
