import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { createTestDatabase, serviceDbTarget, type TestDatabase } from "../../devkit/db.ts";
import { type Running, startAgent, startManager } from "../../devkit/fleet.ts";
import { eventually, freePort } from "../../devkit/net.ts";
import { bunBin, startProcess, stopAll } from "../../devkit/proc.ts";

const ADMIN_TOKEN = "admin-token-cli";
const FLEET_TOKEN = "fleet-token-cli";

describe(`fleet CLI against a real manager (${serviceDbTarget})`, () => {
  let database: TestDatabase;
  let manager: Running;

  async function fleet(args: string[], env: Record<string, string | undefined> = {}) {
    const service = startProcess([bunBin, "bin/fleet.ts", ...args], {
      env: { FLEET_URL: manager.url, ADMIN_TOKEN, ...env },
    });
    const code = await service.exited();
    return { code, output: service.output() };
  }

  beforeAll(async () => {
    database = await createTestDatabase();
    manager = await startManager({
      database,
      env: { ADMIN_TOKEN, FLEET_TOKEN, LAUNCH_RETRY_BASE_S: "60" },
    });
    await startAgent({
      managerUrl: manager.url,
      workerId: "gpu-box-1",
      env: { FLEET_TOKEN, SIM_GPUS: "2x NVIDIA H100 80GB HBM3:81559", SIM_STARTUP_DELAY_MS: "800" },
    });
    await eventually(async () => {
      const response = await fetch(`${manager.url}/v1/workers/gpu-box-1`, {
        headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
      });
      return response.ok;
    });
  });
  afterAll(async () => {
    await stopAll();
    await database?.destroy();
  });

  test("register --wait shows the launch until ready, then the route", async () => {
    const { code, output } = await fleet([
      "models",
      "register",
      "qwen",
      "Qwen/Qwen2-VL-2B-Instruct",
      "--gpu-memory-utilization",
      "0.5",
      "--max-model-len",
      "4096",
      "--routing",
      "session",
      "--wait",
    ]);
    expect(code).toBe(0);
    expect(output).toMatch(/gpu-box-1: placed on GPU \d/);
    expect(output).toContain("gpu-box-1: ready");
    expect(output).toMatch(/ALIAS\s+MODEL\s+WORKER\s+WORKER URL/);
    // The route as the manager's router serves it: ready, with the model's policy.
    expect(output).toMatch(
      /qwen\s+Qwen\/Qwen2-VL-2B-Instruct\s+gpu-box-1\s+http:\/\/127\.0\.0\.1:\d+\s+\d+\s+yes\s+session\s/,
    );
  });

  test("ls commands print tables for people and JSON for scripts", async () => {
    const models = await fleet(["models", "ls", "--json"]);
    expect(models.code).toBe(0);
    expect(JSON.parse(models.output)).toEqual([
      expect.objectContaining({ alias: "qwen", status: "ready", replicas: 1 }),
    ]);

    const table = await fleet(["models", "ls"]);
    expect(table.output).toMatch(/^ALIAS\s+MODEL\s+STATUS\s+READY\s+WORKERS\n/);
    expect(table.output).toMatch(/qwen\s+Qwen\/Qwen2-VL-2B-Instruct\s+ready\s+1\/1\s+gpu-box-1/);

    const workers = await fleet(["workers", "ls", "--json"]);
    expect(JSON.parse(workers.output)).toEqual([
      expect.objectContaining({ worker_id: "gpu-box-1", status: "online" }),
    ]);
    const workerTable = await fleet(["workers", "ls"]);
    expect(workerTable.output).toContain(
      "0:NVIDIA H100 80GB HBM3 80G, 1:NVIDIA H100 80GB HBM3 80G",
    );

    const routes = await fleet(["routes", "ls", "--json"]);
    const snapshot = JSON.parse(routes.output) as {
      routes: Array<{ alias: string; ready: boolean }>;
    };
    expect(snapshot.routes).toEqual([
      expect.objectContaining({ alias: "qwen", ready: true, routing: "session" }),
    ]);
    const routeTable = await fleet(["routes", "ls"]);
    expect(routeTable.output).toMatch(/READY\s+ROUTING/);
    expect(routeTable.output).toMatch(/yes\s+session/);
  });

  test("logs shows the engine's last lines", async () => {
    const { code, output } = await fleet(["logs", "qwen", "--tail", "20"]);
    expect(code).toBe(0);
    expect(output).toContain("Application startup complete.");
  });

  test("keys create shows the key once; revoke ends it", async () => {
    const created = await fleet(["keys", "create", "--name", "ci", "--json"]);
    expect(created.code).toBe(0);
    const key = JSON.parse(created.output) as { id: string; key: string; name: string };
    expect(key.key).toStartWith("sk-fleet-");
    expect(key.name).toBe("ci");

    const listed = await fleet(["keys", "ls", "--json"]);
    expect(listed.output).not.toContain(key.key);

    const chat = () =>
      fetch(`${manager.url}/v1/chat/completions`, {
        method: "POST",
        headers: { authorization: `Bearer ${key.key}`, "content-type": "application/json" },
        body: JSON.stringify({ model: "qwen", messages: [{ role: "user", content: "hi" }] }),
      }).then((response) => response.status);
    await eventually(async () => (await chat()) === 200, { what: "the key to work" });

    // A second key keeps the gateway closed once the first is revoked (with no active key
    // left, a loopback gateway is open again, as it was before any key existed).
    expect((await fleet(["keys", "create", "--name", "other"])).code).toBe(0);
    const revoked = await fleet(["keys", "revoke", key.id]);
    expect(revoked.code).toBe(0);
    expect(revoked.output).toContain(`revoked ${key.id}`);
    await eventually(async () => (await chat()) === 401, { what: "the revoked key to fail" });
  });

  test("routers create shows the credential once; ls shows its last use; revoke ends it", async () => {
    const created = await fleet(["routers", "create", "edge-1"]);
    expect(created.code).toBe(0);
    expect(created.output).toContain("ROUTER_TOKEN");
    const token = /\b(fr_[A-Za-z0-9_-]{43})\b/.exec(created.output)?.[1] ?? "";
    expect(token).not.toBe("");

    const table = await fleet(["routers", "ls"]);
    expect(table.output).toMatch(/^ID\s+NAME\s+PREFIX\s+CREATED\s+LAST USED\s+REVOKED\n/);
    expect(table.output).toMatch(/rtr_\S+\s+edge-1\s+fr_\S+\s+\S+\s+never\s+-/);
    expect(table.output).not.toContain(token);

    const routes = () =>
      fetch(`${manager.url}/v1/routes`, { headers: { authorization: `Bearer ${token}` } }).then(
        (response) => response.status,
      );
    expect(await routes()).toBe(200);
    const listed = await fleet(["routers", "ls", "--json"]);
    const [router] = JSON.parse(listed.output) as { id: string; last_used_at: string | null }[];
    expect(router?.last_used_at).not.toBeNull();
    expect((await fleet(["routers", "ls"])).output).toMatch(/edge-1\s+fr_\S+\s+\S+\s+\d+s ago\s+-/);

    const revoked = await fleet(["routers", "revoke", router?.id ?? ""]);
    expect(revoked.code).toBe(0);
    expect(revoked.output).toContain(`revoked ${router?.id} (edge-1)`);
    expect(await routes()).toBe(401);
    const again = await fleet(["routers", "revoke", router?.id ?? ""]);
    expect(again.code).toBe(1);
    expect(again.output).toContain("already revoked");
    const unnamed = await fleet(["routers", "create"]);
    expect(unnamed.code).toBe(2);
    expect(unnamed.output).toContain("missing NAME");
  });

  test("instances ls shows ids; instances restart brings an engine back on its port, counted", async () => {
    const listed = await fleet(["instances", "ls", "qwen", "--json"]);
    expect(listed.code).toBe(0);
    const [before] = JSON.parse(listed.output) as { id: string; pid: number; port: number }[];
    if (!before) throw new Error("no instance of qwen");
    const table = await fleet(["instances", "ls"]);
    expect(table.output).toMatch(/^ID\s+ALIAS\s+WORKER\s+GPUS\s+PORT\s+STATUS\s+RESTARTS\n/);
    expect(table.output).toContain(before.id);

    const restarted = await fleet([
      "instances",
      "restart",
      "qwen",
      "--reason",
      "cli test",
      "--wait",
    ]);
    expect(restarted.code).toBe(0);
    expect(restarted.output).toContain(`restarting qwen on gpu-box-1 (instance ${before.id})`);
    expect(restarted.output).toContain("gpu-box-1: ready");
    const after = await fleet(["instances", "ls", "qwen", "--json"]);
    const [now] = JSON.parse(after.output) as { pid: number; port: number; restarts: number }[];
    expect(now?.restarts).toBe(1);
    expect(now?.port).toBe(before.port);
    expect(now?.pid).not.toBe(before.pid);

    // By id too; and a second restart while the first is under way is refused, explained.
    const byId = await fleet(["instances", "restart", before.id]);
    expect(byId.code).toBe(0);
    expect(byId.output).toContain("its route is unserved until the engine is ready again");
    const twice = await fleet(["instances", "restart", before.id]);
    expect(twice.code).toBe(1);
    expect(twice.output).toContain("HTTP 409");
    expect(twice.output).toMatch(/is (stopping|starting)/);
    const elsewhere = await fleet(["instances", "restart", "qwen", "--worker", "nobody"]);
    expect(elsewhere.code).toBe(1);
    expect(elsewhere.output).toContain("qwen has no instance on nobody (it runs on gpu-box-1)");
    expect((await fleet(["models", "wait", "qwen"])).code).toBe(0);
  });

  test("register --wait on an engine that cannot start fails with its log lines", async () => {
    const started = Date.now();
    const { code, output } = await fleet([
      "models",
      "register",
      "broken",
      "org/broken",
      "--gpu-memory-utilization",
      "0.3",
      "--extra-arg=--fail-startup",
      "--wait",
      "--timeout",
      "30",
    ]);
    expect(code).toBe(1);
    expect(output).toContain("gpu-box-1: failed");
    expect(output).toContain("CUDA out of memory");
    // The retry (60 s away) falls after --timeout: the wait ends now rather than in vain.
    expect(output).toMatch(/the manager will retry it in about \d+:\d\d, after --timeout \(30 s\)/);
    expect(output).not.toContain("is still");
    expect(Date.now() - started).toBeLessThan(25_000);
  });

  test("workers add prints the line that installs the agent on a host, join token included", async () => {
    const { code, output } = await fleet([
      "workers",
      "add",
      "gpu-box-9",
      "--public-url",
      "https://u557149-9507.bjb2.seetacloud.com:8443",
    ]);
    expect(code).toBe(0);
    expect(output).toContain(
      `curl -fsSL ${manager.url}/install.sh | FLEET_TOKEN=${FLEET_TOKEN} WORKER_ID=gpu-box-9 PUBLIC_URL=https://u557149-9507.bjb2.seetacloud.com:8443 sh`,
    );
    expect(output).not.toContain("note:");
    // A worker that has joined: the line (it upgrades the agent on that host), and a note.
    const joined = await fleet(["workers", "add", "gpu-box-1"]);
    expect(joined.code).toBe(0);
    expect(joined.output).toContain("WORKER_ID=gpu-box-1");
    expect(joined.output).toContain("note: worker gpu-box-1 has already joined");
  });

  test("bad flags and a missing token are explained", async () => {
    const bad = await fleet(["models", "register", "x", "org/x", "--gpu-memory-utilization", "2"]);
    expect(bad.code).toBe(2);
    expect(bad.output).toContain("--gpu-memory-utilization must be in (0, 1]");
    const badRouting = await fleet(["models", "register", "x", "org/x", "--routing", "random"]);
    expect(badRouting.code).toBe(2);
    expect(badRouting.output).toContain(
      "--routing is least_loaded, prefix_affinity, session or round_robin",
    );

    const noToken = await fleet(["models", "ls"], { ADMIN_TOKEN: "" });
    expect(noToken.code).toBe(1);
    expect(noToken.output).toContain("HTTP 401");
    expect(noToken.output).toContain("set ADMIN_TOKEN or pass --token");

    const unknown = await fleet(["models", "frobnicate"]);
    expect(unknown.code).toBe(2);
    expect(unknown.output).toContain("unknown command");
  });

  test("argument mistakes are one-line usage errors (exit 2) that name the flag", async () => {
    const register = ["models", "register", "x", "org/x"];
    const cases: Array<[string[], string]> = [
      [["models", "ls", "--bogus"], "fleet: unknown option --bogus"],
      [[...register, "--max-model-len"], "fleet: --max-model-len needs a value"],
      [
        ["logs", "qwen", "--tail", "-3"],
        "fleet: --tail needs a value; one that starts with a dash",
      ],
      [
        [...register, "--gpu-memory-utilization", "abc"],
        "fleet: --gpu-memory-utilization: expected a number, got abc",
      ],
      [[...register, "--dtype", "foo"], "fleet: --dtype is one of auto, half, float16, bfloat16"],
      // A value that came loose from its engine flag is not dropped silently.
      [[...register, "--extra-arg", "--max-num-seqs", "8"], "fleet: unexpected 8 after MODEL"],
    ];
    for (const [args, message] of cases) {
      const { code, output } = await fleet(args);
      expect({ args, code }).toEqual({ args, code: 2 });
      expect(output).toStartWith(message);
      expect(output.trim().split("\n")).toHaveLength(1);
    }
  });

  test("--extra-arg takes an engine flag as the next word or after =", async () => {
    const { code, output } = await fleet([
      "models",
      "register",
      "eager",
      "org/eager",
      "--gpu-memory-utilization",
      "0.2",
      "--extra-arg",
      "--enforce-eager",
      "--extra-arg=--max-num-seqs=8",
      "--json",
    ]);
    expect(code).toBe(0);
    const model = JSON.parse(output) as { extra_args: string[] };
    expect(model.extra_args).toEqual(["--enforce-eager", "--max-num-seqs=8"]);
    expect((await fleet(["models", "rm", "eager"])).code).toBe(0);
  });

  test("FLEET_URL: a bad one is one line naming it, an empty one is unset, --url wins", async () => {
    const bad = await fleet(["models", "ls"], { FLEET_URL: "notaurl" });
    expect(bad.code).toBe(2);
    expect(bad.output).toStartWith("fleet: invalid environment: FLEET_URL must be an http(s)");
    expect(bad.output.trim().split("\n")).toHaveLength(1);

    const overridden = await fleet(["models", "ls", "--json", "--url", manager.url], {
      FLEET_URL: "notaurl",
    });
    expect(overridden.code).toBe(0);
    expect(JSON.parse(overridden.output)).toBeArray();

    // Empty is unset: no complaint about it, the command's own usage error instead (and no
    // request to the default URL).
    const empty = await fleet(["models", "wait"], { FLEET_URL: "" });
    expect(empty.code).toBe(2);
    expect(empty.output).toStartWith("fleet: missing ALIAS");
  });

  test("rm stops the model and removes its route", async () => {
    const { code, output } = await fleet(["models", "rm", "qwen"]);
    expect(code).toBe(0);
    expect(output).toContain("removed qwen");
    const routes = await fleet(["routes", "ls", "--json"]);
    const snapshot = JSON.parse(routes.output) as { routes: Array<{ alias: string }> };
    expect(snapshot.routes.map((route) => route.alias)).not.toContain("qwen");
  });

  test("workers ls flags a worker no path reaches, and shows the path in use", async () => {
    // Both its URLs are loopback ports nothing listens on: the probes stay on this host. (The
    // plain-http flag needs a public host, which the probes would dial; its problem text is
    // tested in-process in tests/manager/api/advertised-urls.test.ts.)
    const internal = `http://127.0.0.1:${await freePort()}`;
    const unanswered = `http://127.0.0.1:${await freePort()}`;
    const registered = await fetch(`${manager.url}/v1/workers/register`, {
      method: "POST",
      headers: { authorization: `Bearer ${FLEET_TOKEN}`, "content-type": "application/json" },
      body: JSON.stringify({
        worker_id: "rented-box",
        worker_url: internal,
        public_worker_url: unanswered,
        gpu_info: { gpus: [] },
        agent_version: "test",
      }),
    });
    expect(registered.status).toBe(200);
    await eventually(async () => {
      const response = await fetch(`${manager.url}/v1/workers/rented-box`, {
        headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
      });
      const worker = (await response.json()) as {
        paths: { public: { reachable: boolean | null } };
      };
      return worker.paths.public.reachable === false;
    });
    const { code, output } = await fleet(["workers", "ls"]);
    expect(code).toBe(0);
    expect(output).toMatch(/^WORKER\s+STATUS\s+PATH\s+RTT\s+FLAGS\s+URL\s+PUBLIC URL\s+GPUS/);
    expect(output).toMatch(
      /rented-box\s+online\s+none\s+-\s+no-path\s+http:\/\/127\.0\.0\.1:\d+\s+http:\/\/127\.0\.0\.1:\d+\s/,
    );
    expect(output).toContain("rented-box: 1 problem(s): fleet workers show rented-box");
    expect(output).toMatch(
      /gpu-box-1\s+online\s+internal\s+\d+ms\s+-\s+http:\/\/127\.0\.0\.1:\d+\s+-\s/,
    );

    const shown = await fleet(["workers", "show", "gpu-box-1"]);
    expect(shown.code).toBe(0);
    expect(shown.output).toMatch(/internal\s+http:\/\/127\.0\.0\.1:\d+\s+reachable, \d+ ms/);
    expect(shown.output).toContain("public      none (PUBLIC_URL not set)");
    expect(shown.output).toContain("problems    none");

    // No heartbeat since: offline, which is what it shows, not a URL to fix.
    await eventually(async () => {
      const response = await fetch(`${manager.url}/v1/workers/rented-box`, {
        headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
      });
      return ((await response.json()) as { status: string }).status === "offline";
    });
    const offline = await fleet(["workers", "ls"]);
    expect(offline.output).toMatch(/rented-box\s+offline\s+none\s+-\s+-\s+http/);
  });
});
