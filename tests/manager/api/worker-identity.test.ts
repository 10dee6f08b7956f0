import { expect, test } from "bun:test";
import { sql } from "drizzle-orm";
import { eventually } from "../../../devkit/net.ts";
import { sha256Hex } from "../../../kit/crypto.ts";
import type {
  ModelInfo,
  OpenAiError,
  RouteSnapshot,
  WorkerCredentials,
  WorkerRemovalReply,
} from "../../../protocol/index.ts";
import { ADMIN, FLEET, gpu, registration, type TestManager } from "../helpers.ts";
import { describeApi } from "./harness.ts";

type Reply = Record<string, unknown> & { credentials?: WorkerCredentials };
const emptyBeat = { gpu_info: { gpus: [gpu(0)], warning: null }, instances: [] };

/**
 * A worker's identity: it joins once with the join token and gets its own pair; only that
 * credential opens its registrations and heartbeats; an operator rotates the pair or removes
 * the worker. What a malicious host could try with what it holds is refused.
 */
describeApi("manager API: worker identity", (api) => {
  const register = (t: TestManager, id: string, token: string | null) =>
    t.json<Reply>("POST", "/v1/workers/register", {
      token,
      body: registration(id, "http://127.0.0.1:9", [gpu(0)]),
    });
  const beat = (t: TestManager, id: string, token: string | null) =>
    t.json<Reply & OpenAiError>("POST", `/v1/workers/${id}/heartbeat`, { token, body: emptyBeat });
  const workerRow = async (t: TestManager, id: string) =>
    (
      await t.db.query<{
        credential_hash: string | null;
        agent_token: string | null;
        pending_credential_hash: string | null;
        pending_agent_token: string | null;
        rotate_requested_at: string | null;
      }>(
        sql`select credential_hash, agent_token, pending_credential_hash, pending_agent_token, rotate_requested_at from workers where worker_id = ${id}`,
      )
    )[0];

  test("a new worker joins with the join token and gets its pair once; the manager keeps only the hash of its credential", async () => {
    const t = await api.manager();
    const joined = await register(t, "w1", FLEET);
    expect(joined.status).toBe(200);
    const credentials = joined.body.credentials;
    expect(credentials?.worker_credential).toStartWith("fw_");
    expect(credentials?.agent_token).toStartWith("fa_");
    expect(credentials?.worker_credential.length).toBeGreaterThanOrEqual(40);
    const row = await workerRow(t, "w1");
    expect(row?.credential_hash).toBe(await sha256Hex(credentials?.worker_credential ?? ""));
    expect(row?.agent_token).toBe(credentials?.agent_token ?? "");
    const everything = JSON.stringify(await t.db.query(sql`select * from workers`));
    expect(everything).not.toContain(credentials?.worker_credential ?? "?");
    // Operators' views never show either secret.
    const listed = JSON.stringify((await t.json("GET", "/v1/workers")).body);
    for (const secret of [credentials?.worker_credential, credentials?.agent_token]) {
      expect(listed).not.toContain(secret ?? "?");
    }

    // Its own credential re-registers it, and nothing is handed out again.
    const again = await register(t, "w1", credentials?.worker_credential ?? null);
    expect(again.status).toBe(200);
    expect(again.body.credentials).toBeUndefined();
    expect((await beat(t, "w1", credentials?.worker_credential ?? null)).status).toBe(200);

    // ADMIN_TOKEN joins too.
    const byAdmin = await register(t, "w2", ADMIN);
    expect(byAdmin.body.credentials?.worker_credential).toStartWith("fw_");
    expect(byAdmin.body.credentials?.worker_credential).not.toBe(credentials?.worker_credential);
  });

  test("the join token for a worker that already joined is a 409 naming the way out", async () => {
    const t = await api.manager();
    await register(t, "w1", FLEET);
    const { status, body } = await t.json<OpenAiError>("POST", "/v1/workers/register", {
      token: FLEET,
      body: registration("w1", "http://10.6.6.6:6006", [gpu(0)]),
    });
    expect(status).toBe(409);
    expect(body.error.code).toBe("conflict");
    expect(body.error.message).toBe(
      "worker w1 is already registered. Its agent presents the credential in its data directory; to replace the host, remove the worker first: fleet workers rm w1",
    );
    // Nothing the refused caller sent was stored.
    const [row] = await t.db.query<{ worker_url: string }>(
      sql`select worker_url from workers where worker_id = 'w1'`,
    );
    expect(row?.worker_url).toBe("http://127.0.0.1:9");
  });

  test("a worker row from before credentials existed joins and gets its pair", async () => {
    const t = await api.manager();
    await t.db.query(
      sql`insert into workers (worker_id, worker_url) values ('old', 'http://127.0.0.1:9')`,
    );
    const joined = await register(t, "old", FLEET);
    expect(joined.status).toBe(200);
    expect(joined.body.credentials?.worker_credential).toStartWith("fw_");
  });

  test("no worker acts for another, and the join token is not a worker credential", async () => {
    const t = await api.manager();
    const a = (await register(t, "victim", FLEET)).body.credentials;
    const b = (await register(t, "attacker", FLEET)).body.credentials;
    if (!a || !b) throw new Error("no credentials");
    const refused: [string, number][] = [
      // Re-register another worker's id (with the attacker's URL) using one's own credential.
      ["register other", (await register(t, "victim", b.worker_credential)).status],
      ["heartbeat other", (await beat(t, "victim", b.worker_credential)).status],
      ["heartbeat with join token", (await beat(t, "victim", FLEET)).status],
      ["heartbeat with admin token", (await beat(t, "victim", ADMIN)).status],
      ["heartbeat without token", (await beat(t, "victim", null)).status],
      ["heartbeat with agent credential", (await beat(t, "victim", a.agent_token)).status],
      ["register with agent credential", (await register(t, "victim", a.agent_token)).status],
      ["register with made-up credential", (await register(t, "new-one", "fw_guess-guess")).status],
      // A new worker_id with a worker credential: that credential is for its own id only.
      [
        "register new id with credential",
        (await register(t, "made-up", b.worker_credential)).status,
      ],
    ];
    expect(refused).toEqual(refused.map(([what]) => [what, 401]));
    const join = await beat(t, "victim", FLEET);
    expect(join.body.error.message).toContain("own credential");
    // The victim is untouched and still works with its own credential.
    expect((await beat(t, "victim", a.worker_credential)).status).toBe(200);
    const rows = await t.db.query<{ worker_id: string }>(
      sql`select worker_id from workers order by worker_id`,
    );
    expect(rows.map((r) => r.worker_id)).toEqual(["attacker", "victim"]);
  });

  test("an unknown worker's heartbeat is 404 (register again); without a token it is 401", async () => {
    const t = await api.manager();
    const own = (await register(t, "w1", FLEET)).body.credentials?.worker_credential ?? null;
    const ghost = await beat(t, "ghost", own);
    expect([ghost.status, ghost.body.error.code]).toEqual([404, "worker_not_found"]);
    expect((await beat(t, "ghost", null)).status).toBe(401);
  });

  test("a path id that is no worker id is a 400 naming worker_id, whatever the token and in open mode alike", async () => {
    const answers = async (t: TestManager, tokens: (string | null)[]) => {
      const seen: string[] = [];
      for (const id of ["%00", "a%00b", "-w1", "x".repeat(300)]) {
        for (const action of ["heartbeat", "drain"]) {
          for (const token of tokens) {
            const { status, body } = await t.json<OpenAiError>(
              "POST",
              `/v1/workers/${id}/${action}`,
              { token, body: action === "drain" ? {} : emptyBeat },
            );
            // The route's own 400: the id's rule, in the field's name.
            const rule = body.error.message.startsWith("worker_id: must be 1-128 characters");
            seen.push(`${action} ${id.slice(0, 8)}: ${status} ${body.error.param} ${rule}`);
          }
        }
      }
      return seen;
    };
    const expected = (tokens: number) =>
      ["%00", "a%00b", "-w1", "x".repeat(8)].flatMap((id) =>
        ["heartbeat", "drain"].flatMap((action) =>
          Array<string>(tokens).fill(`${action} ${id}: 400 worker_id true`),
        ),
      );
    const t = await api.manager();
    const own = (await register(t, "w1", FLEET)).body.credentials?.worker_credential ?? null;
    const tokens = [null, "not-a-credential", FLEET, ADMIN, own];
    expect(await answers(t, tokens)).toEqual(expected(tokens.length));
    // The worker itself is untouched and keeps beating.
    expect((await beat(t, "w1", own)).status).toBe(200);

    const open = await api.manager({ config: { fleetToken: undefined, adminToken: undefined } });
    expect(await answers(open, [null, "anything"])).toEqual(expected(2));
  });

  test("a credential another manager replica rotated away or removed stops working here at once", async () => {
    const t = await api.manager();
    const own = (await register(t, "w1", FLEET)).body.credentials?.worker_credential ?? null;
    // Verified once: this manager remembers it and skips its lookup next time.
    expect((await beat(t, "w1", own)).status).toBe(200);
    expect((await beat(t, "w1", own)).status).toBe(200);
    // Another replica promoted a new pair (the row changed behind this process's back).
    await t.db.query(
      sql`update workers set credential_hash = ${await sha256Hex("fw_elsewhere")} where worker_id = 'w1'`,
    );
    const refused = await beat(t, "w1", own);
    expect([refused.status, refused.body.error.code]).toEqual([401, "unauthorized"]);
    const [row] = await t.db.query<{ status: string; last_heartbeat: Date }>(
      sql`select status, last_heartbeat from workers where worker_id = 'w1'`,
    );
    // The refused heartbeat wrote nothing.
    await t.db.query(sql`update workers set status = 'offline' where worker_id = 'w1'`);
    expect((await beat(t, "w1", own)).status).toBe(401);
    const [after] = await t.db.query<{ status: string; last_heartbeat: Date }>(
      sql`select status, last_heartbeat from workers where worker_id = 'w1'`,
    );
    expect([after?.status, after?.last_heartbeat]).toEqual(["offline", row?.last_heartbeat]);
    // And one that removed it: 404, so the agent registers again.
    const other = (await register(t, "w2", FLEET)).body.credentials?.worker_credential ?? null;
    expect((await beat(t, "w2", other)).status).toBe(200);
    await t.db.query(sql`delete from workers where worker_id = 'w2'`);
    expect((await beat(t, "w2", other)).status).toBe(404);
  });

  test("open mode issues no credentials and checks none", async () => {
    const t = await api.manager({ config: { fleetToken: undefined, adminToken: undefined } });
    const joined = await register(t, "w1", null);
    expect(joined.status).toBe(200);
    expect(joined.body.credentials).toBeUndefined();
    expect((await register(t, "w1", null)).status).toBe(200);
    expect((await beat(t, "w1", null)).status).toBe(200);
    const row = await workerRow(t, "w1");
    expect([row?.credential_hash, row?.agent_token]).toEqual([null, null]);
    const rotate = await t.json<OpenAiError>("POST", "/v1/workers/w1/rotate", { token: null });
    expect([rotate.status, rotate.body.error.code]).toEqual([409, "conflict"]);
  });

  test("a rotation: the next heartbeat gets a new pair, current once the agent presents it; the old credential then stops working and routers get the new agent credential", async () => {
    const t = await api.manager();
    const a = api.agent();
    await api.register(a, "w1");
    await api.model({ alias: "rot" });
    a.markReady("rot");
    const old = t.credentials.get("w1");
    if (!old) throw new Error("no credentials");
    await t.heartbeat("w1", {
      gpu_info: { gpus: [gpu(0)], warning: null },
      instances: a.reports(),
    });
    const snapshot = async () => (await t.json<RouteSnapshot>("GET", "/v1/routes")).body;
    const before = await snapshot();
    expect(before.routes.map((r) => [r.alias, r.ready, r.agent_token])).toEqual([
      ["rot", true, old.agent_token],
    ]);

    // Only an admin asks; an unknown worker is 404.
    expect((await t.call("POST", "/v1/workers/w1/rotate", { token: FLEET })).status).toBe(401);
    expect((await t.call("POST", "/v1/workers/nobody/rotate")).status).toBe(404);
    const asked = await t.json("POST", "/v1/workers/w1/rotate");
    expect(asked).toEqual({ status: 202, body: { worker_id: "w1", status: "rotation_requested" } });

    const first = (await beat(t, "w1", old.worker_credential)).body.credentials;
    expect(first?.worker_credential).toStartWith("fw_");
    expect(first?.agent_token).toStartWith("fa_");
    // The reply may have been lost: the old credential asks again and gets a fresh pair.
    const second = (await beat(t, "w1", old.worker_credential)).body.credentials;
    if (!first || !second) throw new Error("no rotated credentials");
    expect(second.worker_credential).not.toBe(first.worker_credential);
    expect((await beat(t, "w1", first.worker_credential)).status).toBe(401);
    // Until the agent uses the new pair, routers keep the old agent credential.
    expect((await snapshot()).routes[0]?.agent_token).toBe(old.agent_token);

    const promoted = await beat(t, "w1", second.worker_credential);
    expect(promoted.status).toBe(200);
    expect(promoted.body.credentials).toBeUndefined();
    const row = await workerRow(t, "w1");
    expect(row).toEqual({
      credential_hash: await sha256Hex(second.worker_credential),
      agent_token: second.agent_token,
      pending_credential_hash: null,
      pending_agent_token: null,
      rotate_requested_at: null,
    });
    expect((await beat(t, "w1", old.worker_credential)).status).toBe(401);
    expect((await register(t, "w1", old.worker_credential)).status).toBe(401);
    const after = await snapshot();
    expect(after.version).not.toBe(before.version);
    expect(after.routes[0]?.agent_token).toBe(second.agent_token);

    // The manager's own calls to the agent use the new agent credential.
    t.credentials.set("w1", second);
    a.token = second.agent_token;
    a.authorizations.length = 0;
    const logs = await t.call("GET", "/v1/models/rot/logs?tail=5");
    await logs.body?.cancel();
    expect(a.authorizations).toEqual([`Bearer ${second.agent_token}`]);
  });

  test("a registration with the pending credential promotes the pair too", async () => {
    const t = await api.manager();
    const old = (await register(t, "w1", FLEET)).body.credentials;
    await t.call("POST", "/v1/workers/w1/rotate");
    const next = (await beat(t, "w1", old?.worker_credential ?? null)).body.credentials;
    if (!next) throw new Error("no rotated credentials");
    expect((await register(t, "w1", next.worker_credential)).status).toBe(200);
    expect((await workerRow(t, "w1"))?.agent_token).toBe(next.agent_token);
    expect((await register(t, "w1", old?.worker_credential ?? null)).status).toBe(401);
    const events = await t.db.query<{ kind: string }>(
      sql`select kind from events where kind like 'worker.%' order by id`,
    );
    expect(events.map((e) => e.kind)).toEqual([
      "worker.registered",
      "worker.rotation_requested",
      "worker.registered",
      "worker.credentials_rotated",
    ]);
  });

  test("removing a worker places its instances elsewhere at once, drops what cannot move, and ends its credentials", async () => {
    const t = await api.manager();
    const a1 = api.agent();
    const a2 = api.agent();
    await api.register(a1, "w1", [gpu(0)]);
    await api.model({ alias: "movable", gpu_memory_utilization: 0.5 });
    await api.model({ alias: "pinned", worker_id: "w1", gpu_memory_utilization: 0.4 });
    await api.register(a2, "w2", [gpu(0)]);
    a1.markReady("movable");
    a1.markReady("pinned");
    const w1 = t.credentials.get("w1");
    await t.heartbeat("w1", {
      gpu_info: { gpus: [gpu(0)], warning: null },
      instances: a1.reports(),
    });

    expect((await t.call("DELETE", "/v1/workers/w1", { token: FLEET })).status).toBe(401);
    expect((await t.call("DELETE", "/v1/workers/nobody")).status).toBe(404);
    const removed = await t.json<WorkerRemovalReply>("DELETE", "/v1/workers/w1");
    expect(removed.status).toBe(200);
    expect(removed.body.worker_id).toBe("w1");
    expect(removed.body.rescheduled.map((r) => [r.alias, r.worker_id])).toEqual([
      ["movable", "w2"],
    ]);
    expect(removed.body.dropped.map((d) => d.alias)).toEqual(["pinned"]);
    expect(removed.body.dropped[0]?.reason).toContain("w1");

    // Launched on w2 at once (no RESCHEDULE_AFTER_S wait), its route with it.
    expect(a2.launches.map((l) => l.alias)).toEqual(["movable"]);
    const movable = (await t.json<ModelInfo>("GET", "/v1/models/movable")).body;
    expect(movable.instances.map((i) => [i.worker_id, i.status])).toEqual([["w2", "starting"]]);
    expect(movable.routes.map((r) => r.worker_id)).toEqual(["w2"]);
    const pinned = (await t.json<ModelInfo>("GET", "/v1/models/pinned")).body;
    expect([pinned.status, pinned.instances]).toEqual(["failed", []]);
    const routes = (await t.json<RouteSnapshot>("GET", "/v1/routes")).body;
    expect(routes.routes.some((r) => r.worker_id === "w1")).toBe(false);

    // Its credentials stop working: the agent's next heartbeat is told to register again,
    // and its credential no longer registers it.
    expect((await beat(t, "w1", w1?.worker_credential ?? null)).status).toBe(404);
    expect((await register(t, "w1", w1?.worker_credential ?? null)).status).toBe(401);
    expect((await t.call("GET", "/v1/workers/w1")).status).toBe(404);
    // A host that is still up is asked to stop the engines nobody wants now.
    await eventually(() => a1.stops.length === 2, { what: "leftover engines stopped" });
    expect(a1.stops.sort()).toEqual(["movable", "pinned"]);

    const kinds = await t.db.query<{ kind: string; alias: string | null }>(
      sql`select kind, alias from events where kind in ('instance.evicted', 'instance.rescheduled', 'instance.dropped', 'worker.removed') order by id`,
    );
    const of = (alias: string | null) => kinds.filter((e) => e.alias === alias).map((e) => e.kind);
    expect(of("movable")).toEqual(["instance.evicted", "instance.rescheduled"]);
    expect(of("pinned")).toEqual(["instance.evicted", "instance.dropped"]);
    expect(kinds.at(-1)?.kind).toBe("worker.removed");

    // The same host id may join again, as a new identity.
    const rejoined = await register(t, "w1", FLEET);
    expect(rejoined.body.credentials?.worker_credential).not.toBe(w1?.worker_credential);
  });
});
