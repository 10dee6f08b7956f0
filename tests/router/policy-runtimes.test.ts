import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Server } from "bun";
import { Miniflare } from "miniflare";
import { type OpenTestDb, openFreshDb } from "../../devkit/db.ts";
import { eventually } from "../../devkit/net.ts";
import { bunBin, repoRoot, startProcess, stopAll } from "../../devkit/proc.ts";
import {
  LOAD_HEADER,
  type RouteEntry,
  type RouteSnapshot,
  type RoutingPolicy,
} from "../../protocol/index.ts";
import { hash32 } from "../../router/balancer.ts";
import wrangler from "../../router/wrangler.toml";
import {
  addReplicas,
  createRouterCredential,
  heartbeat,
  type ServedManager,
  serveManager,
  startRouter,
} from "./fixtures.ts";
import {
  base64Of,
  type ProbeCase,
  type ProbeInput,
  type ProbeOutput,
  probe,
} from "./policy-probe.ts";

/**
 * The routing policies on the three router runtimes, side by side against one real manager:
 * a standalone Bun router (`bun router/main.ts`), a Node router (`tsx router/node.ts`) and
 * the built worker on workerd (Miniflare). Each replica is a loopback server standing in for
 * a worker's agent: it answers `/proxy/{alias}/v1/*` with its worker id in the body and an
 * `x-fleet-load` header the test sets, as an agent stamps its engine's load.
 *
 * What every router must do alike (docs/router.md "Balancing"): the same request with the
 * same loads goes to the same replica, the one ranked first by the rendezvous hash the
 * router code computes in-process (tests/router/policy-probe.ts), so affinity survives
 * traffic spread over routers and edge isolates; and past a replica over the load bound or
 * with a queue, to the next one in the key's own hash order.
 */

const runtimes = ["bun", "node", "workerd"] as const;
type Runtime = (typeof runtimes)[number];

/** Each alias on three workers of its own (a worker holds one alias at the default share). */
const policies = {
  affine: "prefix_affinity",
  sticky: "session",
  turns: "round_robin",
  light: "least_loaded",
  bounded: "prefix_affinity",
  seeded: "prefix_affinity",
} as const satisfies Record<string, RoutingPolicy>;
type Alias = keyof typeof policies;
const aliases = Object.keys(policies) as Alias[];

const IDLE = "r=0;w=0;kv=0.1";

type Upstream = {
  workerId: string;
  url: string;
  /** The `x-fleet-load` its answers carry; null: none (an agent that reads no engine load). */
  load: string | null;
  served: number;
  server: Server<undefined>;
};

/** A worker's public URL: answers any `/proxy/{alias}/v1/*` with its id, stamping `load`. */
function startUpstream(workerId: string): Upstream {
  const upstream: Omit<Upstream, "url" | "server"> = { workerId, load: IDLE, served: 0 };
  const server = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    async fetch(request) {
      await request.arrayBuffer();
      if (!new URL(request.url).pathname.startsWith("/proxy/")) {
        return new Response("not found", { status: 404 });
      }
      upstream.served++;
      const usage = { prompt_tokens: 3, completion_tokens: 1, total_tokens: 4 };
      return Response.json(
        {
          id: `answer-${upstream.served}`,
          object: "chat.completion",
          replica: workerId,
          choices: [
            {
              index: 0,
              message: { role: "assistant", content: "ok" },
              text: "ok",
              finish_reason: "stop",
            },
          ],
          data: [{ object: "embedding", index: 0, embedding: [0.5] }],
          usage,
        },
        upstream.load === null ? {} : { headers: { [LOAD_HEADER]: upstream.load } },
      );
    },
  });
  return Object.assign(upstream, { url: `http://127.0.0.1:${server.port}`, server });
}

let db: OpenTestDb;
let manager: ServedManager;
let buildDir: string;
let routes: RouteEntry[];
const upstreams = new Map<string, Upstream>();
const routers = new Map<Runtime, string>();
const miniflares: Miniflare[] = [];

/** Bundles `entry` for workerd and runs it in Miniflare with `bindings`; resolves to its URL. */
async function startWorkerd(entry: string, bindings: Record<string, string>): Promise<string> {
  const outfile = join(buildDir, `${miniflares.length}.js`);
  const build = Bun.spawn(
    [bunBin, "build", entry, "--target=browser", "--format=esm", "--outfile", outfile],
    { cwd: repoRoot, stdout: "pipe", stderr: "pipe" },
  );
  if ((await build.exited) !== 0) throw new Error(await new Response(build.stderr).text());
  const mf = new Miniflare({
    modules: [{ type: "ESModule", path: "worker.js", contents: readFileSync(outfile, "utf8") }],
    compatibilityDate: wrangler.compatibility_date,
    bindings,
    host: "127.0.0.1",
    port: 0,
  });
  miniflares.push(mf);
  return String(await mf.ready).replace(/\/$/, "");
}

beforeAll(async () => {
  buildDir = mkdtempSync(join(tmpdir(), "policy-runtimes-"));
  db = await openFreshDb();
  manager = await serveManager(db);
  for (const alias of aliases) {
    const replicas = [0, 1, 2].map((index) => {
      const upstream = startUpstream(`${alias}-${index}`);
      upstreams.set(upstream.workerId, upstream);
      return { workerId: upstream.workerId, url: upstream.url };
    });
    await addReplicas(manager, alias, replicas, { routing: policies[alias] });
  }
  const snapshot = await manager.json<RouteSnapshot>("GET", "/v1/routes");
  routes = snapshot.body.routes;
  for (const index of [0, 1, 2]) (upstreams.get(`seeded-${index}`) as Upstream).load = null;
  const [bun, node, workerd] = await Promise.all([
    startRouter("bun", manager.url),
    startRouter("node", manager.url),
    createRouterCredential(manager.url, "edge").then((credential) =>
      startWorkerd("router/worker.ts", {
        MANAGER_URL: manager.url,
        ROUTER_TOKEN: credential.token,
        REQUIRE_API_KEY: "false",
        ROUTES_REFRESH_MS: "200",
      }),
    ),
  ]);
  routers.set("bun", bun.url);
  routers.set("node", node.url);
  routers.set("workerd", workerd);
  // Every router has the table with every alias; no inference request yet, so no router
  // has heard any replica's load or taken a turn.
  for (const [runtime, url] of routers) {
    await eventually(
      async () => {
        const response = await fetch(`${url}/v1/models`);
        if (response.status !== 200) return false;
        const { data } = (await response.json()) as { data: { id: string }[] };
        return aliases.every((alias) => data.some((model) => model.id === alias));
      },
      { what: `the ${runtime} router listing every alias`, timeoutMs: 30_000 },
    );
  }
}, 120_000);

afterAll(async () => {
  await Promise.all(miniflares.map((mf) => mf.dispose()));
  await stopAll();
  for (const upstream of upstreams.values()) upstream.server.stop(true);
  await manager?.close();
  await db?.destroy();
  if (buildDir) rmSync(buildDir, { recursive: true, force: true });
});

type Call = { path: string; body: Uint8Array<ArrayBuffer>; session?: string };

const encoder = new TextEncoder();

function chat(alias: Alias, messages: unknown[], extra: Record<string, unknown> = {}): Call {
  return {
    path: "/v1/chat/completions",
    body: encoder.encode(JSON.stringify({ model: alias, messages, max_tokens: 4, ...extra })),
  };
}

/** Sends `request` through the router at `url`; answers the worker id that served it. */
async function send(url: string, request: Call): Promise<string> {
  const response = await fetch(`${url}${request.path}`, {
    method: "POST",
    headers: {
      "content-type": "application/json",
      ...(request.session ? { "x-session-id": request.session } : {}),
    },
    body: request.body,
  });
  const text = await response.text();
  if (response.status !== 200) throw new Error(`${url}${request.path}: ${response.status} ${text}`);
  // The agent's load header is the router's to read, never the client's.
  expect(response.headers.get(LOAD_HEADER)).toBeNull();
  return (JSON.parse(text) as { replica: string }).replica;
}

function probeCase(request: Call): ProbeCase {
  const model = (JSON.parse(new TextDecoder().decode(request.body)) as { model: Alias }).model;
  return {
    policy: policies[model],
    path: request.path,
    body: base64Of(request.body),
    ...(request.session ? { session: request.session } : {}),
  };
}

/** The balancer's walk order for `request` (first: where it goes at equal loads), in-process. */
function ranking(request: Call): string[] {
  const [result] = probe({ cases: [probeCase(request)], routes, texts: [] }).cases;
  if (!result?.key) throw new Error("the request has no affinity key");
  return result.ranking;
}

const system = {
  role: "system",
  content: "You are a careful reviewer of pull requests. ".repeat(20),
};

/** A conversation's turns: each one repeats the history, so its stable prefix stays. */
function conversation(alias: Alias, opening: string, turns: number): Call[] {
  const messages: { role: string; content: string }[] = [
    system,
    { role: "user", content: opening },
  ];
  const requests: Call[] = [];
  for (let turn = 0; turn < turns; turn++) {
    requests.push(chat(alias, [...messages]));
    messages.push({ role: "assistant", content: `answer ${turn}` });
    messages.push({ role: "user", content: `follow-up ${turn}` });
  }
  return requests;
}

for (const runtime of runtimes) {
  describe(`policies on the ${runtime} router`, () => {
    const url = () => routers.get(runtime) as string;

    test("prefix_affinity: every turn of a conversation on one replica, conversations spread", async () => {
      const homes = new Set<string>();
      for (let user = 0; user < 9; user++) {
        const turns = conversation("affine", `review #${user}: is this lock ordering safe?`, 3);
        const expected = ranking(turns[0] as Call)[0] as string;
        homes.add(expected);
        for (const turn of turns) expect(await send(url(), turn)).toBe(expected);
      }
      expect(homes.size).toBeGreaterThan(1);
    });

    test("session: one x-session-id stays on one replica, sessions spread, `user` stands in", async () => {
      const homes = new Set<string>();
      for (let session = 0; session < 9; session++) {
        const id = `session-${session}`;
        const expected = ranking({ ...chat("sticky", []), session: id })[0] as string;
        homes.add(expected);
        for (let turn = 0; turn < 3; turn++) {
          const request = chat("sticky", [{ role: "user", content: `question ${turn} of ${id}` }]);
          expect(await send(url(), { ...request, session: id })).toBe(expected);
        }
      }
      expect(homes.size).toBeGreaterThan(1);
      const byUser = chat("sticky", [{ role: "user", content: "hi" }], { user: "bob" });
      const expected = ranking(byUser)[0];
      for (let turn = 0; turn < 2; turn++)
        expect(await send(url(), byUser)).toBe(expected as string);
    });

    test("round_robin: the replicas in turn", async () => {
      const served: string[] = [];
      for (let index = 0; index < 6; index++) {
        served.push(await send(url(), chat("turns", [{ role: "user", content: "same words" }])));
      }
      expect(new Set(served.slice(0, 3)).size).toBe(3);
      expect(served.slice(3)).toEqual(served.slice(0, 3));
    });

    test("least_loaded: the replica whose x-fleet-load reports a queue gets no requests", async () => {
      const loaded = upstreams.get("light-1") as Upstream;
      loaded.load = "r=30;w=4;kv=0.95";
      const request = chat("light", [{ role: "user", content: "anything" }]);
      // A router learns an engine's load from its answers: until the loaded replica has
      // answered this router once, it serves as well as the others (ties are broken at random).
      await eventually(async () => (await send(url(), request)) === loaded.workerId, {
        what: "the loaded replica answering once",
      });
      const served: string[] = [];
      for (let index = 0; index < 12; index++) served.push(await send(url(), request));
      expect(served.filter((worker) => worker === loaded.workerId)).toEqual([]);
    });
  });
}

describe("the same choice in every router", () => {
  test("Bun, Node and workerd send each request to the replica its hash ranks first", async () => {
    const invalidUtf8 = [
      0xc3, 0x28, 0xf0, 0x9f, 0x98, 0x41, 0xed, 0xa0, 0x80, 0xf4, 0x90, 0x80, 0x80,
    ];
    const withBytes = (alias: Alias, bytes: number[]): Call => {
      const [head, tail] = JSON.stringify({
        model: alias,
        messages: [
          { role: "system", content: "\u0001" },
          { role: "user", content: "bytes" },
        ],
      }).split("\\u0001");
      return {
        path: "/v1/chat/completions",
        body: new Uint8Array([...encoder.encode(head), ...bytes, ...encoder.encode(tail)]),
      };
    };
    // The key is cut at 4096 code units: here between the two halves of the emoji.
    const long = `${"a".repeat(4087)}😀${"x".repeat(2000)}`;
    const requests: Call[] = [
      chat("affine", [
        { role: "system", content: "日本語で答えてください。" },
        { role: "user", content: "素数とは？" },
      ]),
      chat("affine", [
        { role: "system", content: "Réponds en français." },
        { role: "user", content: "café" },
      ]),
      // The same text in another Unicode normal form is another key, alike in every router.
      chat("affine", [
        { role: "system", content: "Réponds en français." },
        { role: "user", content: "cafe\u0301" },
      ]),
      chat("affine", [
        { role: "developer", content: "🚀 emoji 👩‍💻 and ZWJ" },
        { role: "user", content: "go" },
      ]),
      chat("affine", [
        { role: "system", content: long },
        { role: "user", content: "cut inside a pair?" },
      ]),
      chat("affine", [
        {
          role: "system",
          content: [
            { type: "text", text: "parts " },
            { type: "text", text: "joined" },
          ],
        },
        { role: "user", content: [{ type: "text", text: "مرحبا" }] },
      ]),
      chat("affine", [{ role: "user", content: "lone \ud800 surrogate" }]),
      withBytes("affine", invalidUtf8),
      {
        path: "/v1/chat/completions",
        body: new Uint8Array([
          0xef,
          0xbb,
          0xbf,
          ...chat("affine", [{ role: "user", content: "BOM" }]).body,
        ]),
      },
      {
        path: "/v1/completions",
        body: encoder.encode(
          JSON.stringify({ model: "affine", prompt: `Ω ${"lorem ipsum ".repeat(40)}` }),
        ),
      },
      {
        path: "/v1/completions",
        body: encoder.encode(
          JSON.stringify({ model: "affine", prompt: ["first prompt", "second"] }),
        ),
      },
      {
        path: "/v1/completions",
        body: encoder.encode(JSON.stringify({ model: "affine", prompt: [1, 2, 3] })),
        session: "tokens-only",
      },
      {
        path: "/v1/embeddings",
        body: encoder.encode(JSON.stringify({ model: "affine", input: "embed me ✓" })),
      },
    ];
    const homes = new Set<string>();
    for (const request of requests) {
      const expected = ranking(request)[0] as string;
      homes.add(expected);
      const served = await Promise.all(
        runtimes.map((runtime) => send(routers.get(runtime) as string, request)),
      );
      expect({ request: probeCase(request).body, served }).toEqual({
        request: probeCase(request).body,
        served: [expected, expected, expected],
      });
    }
    expect(homes.size).toBeGreaterThan(1);
  });

  test("past a replica over the load bound, and one with a queue, to the next in hash order: alike in every router", async () => {
    const first = chat("bounded", [system, { role: "user", content: "the bound" }]);
    const [home, next, third] = ranking(first) as [string, string, string];
    // A second conversation whose home is the first one's third choice.
    const second = Array.from({ length: 200 }, (_, index) =>
      chat("bounded", [system, { role: "user", content: `queue ${index}` }]),
    ).find((request) => ranking(request)[0] === third) as Call;
    expect(second).toBeDefined();
    const walk = (request: Call) =>
      ranking(request).find((worker) => worker !== home && worker !== third) as string;
    expect(walk(first)).toBe(next);
    (upstreams.get(home) as Upstream).load = "r=40;w=0;kv=0.9"; // far over the bound
    (upstreams.get(third) as Upstream).load = "r=1;w=2;kv=0.5"; // under it, with a queue
    const sequence = [first, second, first, second, first];
    const served = await Promise.all(
      runtimes.map(async (runtime) => {
        const order: string[] = [];
        for (const request of sequence)
          order.push(await send(routers.get(runtime) as string, request));
        return order;
      }),
    );
    // Each router learns the two loads from the first answers (nothing told it before),
    // then walks both conversations on; every router the same way.
    const expected = [home, third, walk(first), walk(second), walk(first)];
    expect(served).toEqual([expected, expected, expected]);
  });

  test("a load the manager has from a heartbeat moves the request on in every router, with no header", async () => {
    const request = chat("seeded", [system, { role: "user", content: "the heartbeat" }]);
    const [home, next] = ranking(request) as [string, string];
    const sendAll = () =>
      Promise.all(runtimes.map((runtime) => send(routers.get(runtime) as string, request)));
    // The replicas' answers carry no x-fleet-load: nothing moves the request yet.
    expect(await sendAll()).toEqual([home, home, home]);
    const agent = manager.agents.get(home);
    const instance = agent?.instances.get("seeded");
    if (!instance) throw new Error(`no seeded instance on ${home}`);
    instance.load = { running: 40, waiting: 3, kv: 0.9, hit: null };
    await heartbeat(manager, home, "seeded");
    // Each router reads GET /v1/route-loads after its next revalidation (workerd: on a
    // request, under waitUntil), then walks past the loaded replica.
    for (const runtime of runtimes) {
      const url = routers.get(runtime) as string;
      await eventually(async () => (await send(url, request)) === next, {
        what: `the ${runtime} router walking past ${home}`,
      });
    }
    expect(await sendAll()).toEqual([next, next, next]);
  });
});

/** FNV-1a over UTF-16 code units and murmur3's fmix32, in BigInt: no Math.imul, no `>>>`. */
function referenceHash(text: string): { fnv: number; hash: number } {
  const mask = 0xffffffffn;
  let hash = 0x811c9dc5n;
  for (let index = 0; index < text.length; index++) {
    hash ^= BigInt(text.charCodeAt(index));
    hash = (hash * 0x01000193n) & mask;
  }
  const fnv = Number(hash);
  hash ^= hash >> 16n;
  hash = (hash * 0x85ebca6bn) & mask;
  hash ^= hash >> 13n;
  hash = (hash * 0xc2b2ae35n) & mask;
  hash ^= hash >> 16n;
  return { fnv, hash: Number(hash) };
}

const texts = [
  "",
  "a",
  "foobar",
  "p:\u0000system\u0000You are helpful.\u0000user\u0000hi\u0000affine|inst|http://127.0.0.1:1",
  "café",
  "cafe\u0301",
  "日本語",
  "😀👩‍💻",
  "lone \ud800 and \udfff",
  "\ufffd\ufeff",
  "x".repeat(5000),
];

describe("the hash and the key, in process on each runtime", () => {
  test("hash32 is FNV-1a (published vectors) with murmur3's finaliser, over UTF-16 code units", () => {
    expect(referenceHash("").fnv).toBe(0x811c9dc5);
    expect(referenceHash("a").fnv).toBe(0xe40c292c);
    expect(referenceHash("foobar").fnv).toBe(0xbf9cf968);
    for (const text of texts) expect(hash32(text)).toBe(referenceHash(text).hash);
    // Code units, not code points or UTF-8 bytes: no encoder between the text and the hash.
    expect(hash32("😀")).toBe(referenceHash("\ud83d\ude00").hash);
  });

  test("Bun, Node and workerd compute the same keys, hashes and rankings from the same bytes", async () => {
    const requests = [
      ...conversation("affine", "über straße", 2),
      chat("affine", [
        { role: "system", content: `${"🚀".repeat(2047)}a😀` },
        { role: "user", content: "cut" },
      ]),
      { ...chat("sticky", [{ role: "user", content: "x" }]), session: "ses-ü" },
      chat("sticky", [{ role: "user", content: "x" }], { user: "user-ß" }),
      chat("turns", [{ role: "user", content: "x" }]),
      chat("light", [{ role: "user", content: "x" }]),
      {
        path: "/v1/chat/completions",
        body: new Uint8Array([
          ...encoder.encode('{"model":"affine","messages":[{"role":"user","content":"'),
          0xc0,
          0xaf,
          0xe0,
          0x80,
          0x80,
          0xff,
          0xfe,
          0xf0,
          0x9f,
          0x98,
          ...encoder.encode('"}]}'),
        ]),
      },
    ];
    const input: ProbeInput = { cases: requests.map(probeCase), routes, texts };
    const inBun = probe(input);
    const [inNode, inWorkerd] = await Promise.all([runInNode(input), runInWorkerd(input)]);
    // Every case has a key but least_loaded's (round_robin's is its turn-taking marker).
    expect(inBun.cases.filter((entry) => entry.key === null).length).toBe(1);
    // Openings and later turns both among them, so that their verdicts are compared too.
    expect(new Set(inBun.cases.map((entry) => entry.opening))).toEqual(new Set([true, false]));
    expect(inNode).toEqual(inBun);
    expect(inWorkerd).toEqual(inBun);
  });
});

async function runInNode(input: ProbeInput): Promise<ProbeOutput> {
  const file = join(buildDir, "probe-input.json");
  writeFileSync(file, JSON.stringify(input));
  const script = [
    'import { readFileSync } from "node:fs";',
    'import { probe } from "./tests/router/policy-probe.ts";',
    `const input = JSON.parse(readFileSync(${JSON.stringify(file)}, "utf8"));`,
    'console.log("PROBE " + JSON.stringify(probe(input)));',
  ].join("\n");
  const node = startProcess(["node", "--import", "tsx", "--input-type=module", "-e", script]);
  expect(await node.exited()).toBe(0);
  const line = node
    .output()
    .split("\n")
    .find((text) => text.startsWith("PROBE "));
  if (!line) throw new Error(`no probe output from node: ${node.output()}`);
  return JSON.parse(line.slice("PROBE ".length)) as ProbeOutput;
}

async function runInWorkerd(input: ProbeInput): Promise<ProbeOutput> {
  const url = await startWorkerd("tests/router/policy-probe.ts", {});
  const response = await fetch(url, { method: "POST", body: JSON.stringify(input) });
  expect(response.status).toBe(200);
  return (await response.json()) as ProbeOutput;
}
