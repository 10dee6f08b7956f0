import { describe, expect, test } from "bun:test";
import { eventually } from "../../devkit/net.ts";
import type { RouteEntry } from "../../protocol/index.ts";
import {
  Balancer,
  ENGINE_LOAD_FADE_MS,
  ENGINE_LOAD_TTL_MS,
  LOAD_SLACK,
  loadBound,
  OTHERS_SMOOTHING,
  SCORE_ALL_UP_TO,
} from "../../router/balancer.ts";
import {
  affinityKey,
  MESSAGE_KEY_CHARS,
  opensConversation,
  PREFIX_CHARS,
  prefixKey,
  ROUND_ROBIN,
  SYSTEM_KEY_CHARS,
} from "../../router/policy.ts";
import { SnapshotPoller } from "../../router/snapshot-poller.ts";
import { rankingOf } from "./policy-probe.ts";
import { route } from "./route-entry.ts";

const chat = "/v1/chat/completions";
const system = { role: "system", content: "You are a terse assistant." };

function balancer(seed: number) {
  let now = 1_000_000;
  let state = seed;
  const random = () => {
    state = (state * 1_103_515_245 + 12_345) % 2 ** 31;
    return state / 2 ** 31;
  };
  const made = new Balancer({
    ejectAfter: 3,
    cooldownMs: 1000,
    maxCooldownMs: 5000,
    now: () => now,
    random,
  });
  return { b: made, advance: (ms: number) => (now += ms) };
}

const replicas: RouteEntry[] = ["w1", "w2", "w3", "w4"].map((workerId) =>
  route({ alias: "m", workerId, url: `http://${workerId}.test`, routing: "prefix_affinity" }),
);
const none = new Set<string>();
const workerOf = (b: Balancer, key: string | undefined) =>
  b.pick(replicas, none, key)?.route.worker_id;
const stateOf = (b: Balancer, worker: string) =>
  b.state(replicas.find((r) => r.worker_id === worker) as RouteEntry);

describe("routing policy keys", () => {
  test("every turn of a conversation has the key of its system prompt and first user message", () => {
    const turn1 = { messages: [system, { role: "user", content: "hi" }] };
    const turn3 = {
      messages: [
        system,
        { role: "user", content: "hi" },
        { role: "assistant", content: "hello" },
        { role: "user", content: "more" },
      ],
    };
    const other = { messages: [system, { role: "user", content: "hello there" }] };
    const parts = {
      messages: [
        { role: "system", content: [{ type: "text", text: "You are a terse assistant." }] },
        { role: "user", content: [{ type: "text", text: "hi" }] },
      ],
    };
    expect(prefixKey(turn1, chat)).toBe(prefixKey(turn3, chat) as string);
    expect(prefixKey(turn1, chat)).not.toBe(prefixKey(other, chat) as string);
    expect(prefixKey(parts, chat)).toBe(prefixKey(turn1, chat) as string);
  });

  test("under a long shared system prompt, conversations still differ by their first user message", () => {
    // An agent's instructions and tool definitions: far beyond the system part's cap.
    const agent = { role: "system", content: "Tools and rules. ".repeat(SYSTEM_KEY_CHARS / 4) };
    const conversation = (user: string, turns: number) => {
      const messages: { role: string; content: string }[] = [
        agent,
        { role: "user", content: user },
      ];
      for (let turn = 1; turn < turns; turn++)
        messages.push(
          { role: "assistant", content: `answer ${turn}` },
          { role: "user", content: `turn ${turn}` },
        );
      return { messages };
    };
    const first = prefixKey(conversation("fix the build", 1), chat) as string;
    expect(prefixKey(conversation("fix the build", 6), chat)).toBe(first);
    expect(prefixKey(conversation("write the docs", 1), chat)).not.toBe(first);
    // The key reads at most the capped system text and the capped first message.
    expect(first.length).toBeLessThanOrEqual(SYSTEM_KEY_CHARS + MESSAGE_KEY_CHARS + 32);
    // And they spread over the replicas instead of all landing on the system prompt's one.
    const { b } = balancer(1);
    const counts = new Map<string, number>();
    for (let i = 0; i < 400; i++) {
      const key = affinityKey("prefix_affinity", undefined, conversation(`task ${i}`, 1), chat);
      const worker = workerOf(b, key) as string;
      counts.set(worker, (counts.get(worker) ?? 0) + 1);
    }
    expect(counts.size).toBe(4);
    for (const count of counts.values()) expect(count).toBeGreaterThan(60);
  });

  test("completions: the first characters of the prompt; token ids have no prefix key", () => {
    const long = "x".repeat(PREFIX_CHARS);
    expect(prefixKey({ prompt: `${long}tail one` }, "/v1/completions")).toBe(
      prefixKey({ prompt: [`${long}tail two`] }, "/v1/completions") as string,
    );
    expect(prefixKey({ prompt: [1, 2, 3] }, "/v1/completions")).toBeUndefined();
  });

  test("a chat with no assistant turn opens its conversation; completions never do", () => {
    const user = { role: "user", content: "hi" };
    expect(opensConversation({ messages: [system, user] }, chat)).toBe(true);
    expect(opensConversation({ messages: [user, { role: "user", content: "more" }] }, chat)).toBe(
      true,
    );
    const later = { messages: [system, user, { role: "assistant", content: "hello" }, user] };
    expect(opensConversation(later, chat)).toBe(false);
    expect(opensConversation({ messages: "hi" }, chat)).toBe(false);
    expect(opensConversation({ prompt: "hi" }, "/v1/completions")).toBe(false);
    expect(opensConversation({ input: "hi" }, "/v1/embeddings")).toBe(false);
  });

  test("a Responses request keys as the chat it stands for; its later turns open nothing", () => {
    const responses = "/v1/responses";
    const user = { role: "user", content: "hi" };
    // instructions + input is the chat of system + user: the same home for both APIs.
    expect(prefixKey({ instructions: system.content, input: [user] }, responses)).toBe(
      prefixKey({ messages: [system, user] }, chat) as string,
    );
    expect(prefixKey({ input: "hi" }, responses)).toBe(
      prefixKey({ messages: [user] }, chat) as string,
    );
    // Every turn of one conversation keys alike: the assistant's output and tool results follow.
    const later = {
      instructions: system.content,
      input: [
        user,
        { type: "message", role: "assistant", content: [{ type: "output_text", text: "hello" }] },
        { type: "function_call_output", call_id: "c1", output: "42" },
      ],
    };
    expect(prefixKey(later, responses)).toBe(
      prefixKey({ instructions: system.content, input: [user] }, responses) as string,
    );
    expect(opensConversation({ input: "hi" }, responses)).toBe(true);
    expect(opensConversation({ input: [user] }, responses)).toBe(true);
    expect(opensConversation(later, responses)).toBe(false);
    expect(opensConversation({ input: "next", previous_response_id: "resp_1" }, responses)).toBe(
      false,
    );
    // Rerank and score have no prefix key.
    expect(prefixKey({ query: "q", documents: ["d"], prompt: "p" }, "/v1/rerank")).toBeUndefined();
  });

  test("policies: least_loaded none, session its header or user, prefix falls back to session", () => {
    const body = { messages: [system] };
    expect(affinityKey("least_loaded", "s1", body, chat)).toBeUndefined();
    expect(affinityKey("session", "s1", body, chat)).toBe("s:s1");
    expect(affinityKey("session", undefined, body, chat)).toBeUndefined();
    expect(affinityKey("prefix_affinity", "s1", body, chat)?.startsWith("p:")).toBe(true);
    expect(affinityKey("prefix_affinity", "s1", { prompt: [1] }, "/v1/completions")).toBe("s:s1");
  });
});

describe("bounded-load rendezvous hashing", () => {
  test("two routers with other random sources pick the same replica for the same key", () => {
    const a = balancer(1).b;
    const b = balancer(999).b;
    for (let i = 0; i < 200; i++) expect(workerOf(a, `p:key${i}`)).toBe(workerOf(b, `p:key${i}`));
  });

  test("keys spread over the replicas", () => {
    const { b } = balancer(1);
    const counts = new Map<string, number>();
    for (let i = 0; i < 2000; i++) {
      const worker = workerOf(b, `p:conversation ${i}`) as string;
      counts.set(worker, (counts.get(worker) ?? 0) + 1);
    }
    expect(counts.size).toBe(4);
    for (const count of counts.values()) expect(count).toBeGreaterThan(350);
  });

  test("a replica at the load bound is passed over for the next in the key's ranking", () => {
    const { b } = balancer(1);
    const key = "p:busy conversation";
    const home = workerOf(b, key) as string;
    // The others idle: the bound is 0 + LOAD_SLACK; home holds 8.
    stateOf(b, home).inflight = 8;
    const next = workerOf(b, key) as string;
    expect(next).not.toBe(home);
    // Deterministic: another router seeing the same loads walks to the same replica.
    const other = balancer(7).b;
    stateOf(other, home).inflight = 8;
    expect(workerOf(other, key)).toBe(next);
    stateOf(b, home).inflight = LOAD_SLACK - 1; // within the bound again: back home
    expect(workerOf(b, key)).toBe(home);
  });

  test("the bound is LOAD_SLACK over the least loaded replica, not a factor of the mean", () => {
    const { b } = balancer(1);
    const key = "p:bound conversation";
    const ranking = rankingOf(replicas, key);
    const [home, second, third, fourth] = ranking as [string, string, string, string];
    const loads = (values: [number, number, number, number]) => {
      for (const [index, worker] of ranking.entries())
        stateOf(b, worker).inflight = values[index] as number;
      return workerOf(b, key);
    };
    // A few requests in flight never walk, however idle the others.
    expect(loads([LOAD_SLACK - 1, 0, 0, 0])).toBe(home);
    expect(loads([LOAD_SLACK, 0, 0, 0])).toBe(second);
    // At 12 apiece, 15 stays home; under 1.5× the mean it stayed home up to 18.
    expect(loads([15, 12, 12, 12])).toBe(home);
    expect(loads([16, 12, 12, 12])).toBe(second);
    // Walking on, the next in ranking that is itself under the bound, not the least loaded.
    expect(loads([16, 16, 15, 12])).toBe(third);
    expect(loads([16, 16, 16, 12])).toBe(fourth);
    // One idle replica pulls the bound down for all: a small load, but not the mean, walks.
    expect(loads([4, 4, 4, 0])).toBe(fourth);
    // Engines batching many sequences: the slack grows to an eighth of the least load, so
    // a few arrivals' swing does not walk conversations off their warm replicas.
    expect(loadBound(64)).toBe(72);
    expect(loads([71, 64, 64, 64])).toBe(home);
    expect(loads([72, 64, 64, 64])).toBe(second);
    // Fractional loads (the other routers' fading share) compare as they are.
    expect(loads([15.9, 12, 12.5, 12])).toBe(home);
    expect(loads([16.1, 12, 12.5, 12])).toBe(second);
    // Another router with other random numbers and the same loads: the same choices.
    const other = balancer(99).b;
    for (const [index, worker] of ranking.entries())
      stateOf(other, worker).inflight = [16.1, 12, 12.5, 12][index] as number;
    expect(workerOf(other, key)).toBe(second);
  });

  test("an opening goes to the least loaded replica, the key's ranking deciding among equals", () => {
    const { b } = balancer(1);
    const key = "p:opening conversation";
    const ranking = rankingOf(replicas, key);
    const [home, second, third] = ranking as [string, string, string, string];
    const opening = () => b.pick(replicas, none, key, true)?.route.worker_id;
    // All idle: home, as for any turn.
    expect(opening()).toBe(home);
    // Home one busier: a later turn stays (within the bound), an opening does not.
    stateOf(b, home).inflight = 1;
    expect(workerOf(b, key)).toBe(home);
    expect(opening()).toBe(second);
    // Among the equally least loaded, the first in ranking; a fraction less wins outright.
    stateOf(b, second).inflight = 1;
    expect(opening()).toBe(third);
    b.observe(stateOf(b, home), "r=0;w=0", { at: 1_000_000, inflight: 1 });
    stateOf(b, home).inflight = 0;
    expect(opening()).toBe(home);
    // Another router with the same loads: the same choice.
    const other = balancer(42).b;
    stateOf(other, home).inflight = 1;
    expect(other.pick(replicas, none, key, true)?.route.worker_id).toBe(second);
  });

  test("every replica under the bound queued: the least loaded, the first in ranking on ties", () => {
    const { b } = balancer(1);
    const key = "p:all queued";
    const home = workerOf(b, key) as string;
    const tried = new Set([stateOf(b, home).key]);
    const second = b.pick(replicas, tried, key)?.route.worker_id as string;
    for (const route of replicas)
      b.observe(b.state(route), "r=1;w=1", { at: 1_000_000, inflight: 0 });
    // Every engine has the same load and a queue: none qualifies; the first in ranking.
    expect(workerOf(b, key)).toBe(home);
    // Home one busier: the next one in ranking, as the least loaded of the rest.
    stateOf(b, home).inflight = 1;
    expect(workerOf(b, key)).toBe(second);
  });

  test("an engine with a queue (x-fleet-load w>0) is passed over until its figures go stale", () => {
    const { b, advance } = balancer(1);
    const key = "p:queued conversation";
    const home = workerOf(b, key) as string;
    b.observe(stateOf(b, home), "r=1;w=2;kv=0.9");
    expect(workerOf(b, key)).not.toBe(home);
    advance(ENGINE_LOAD_TTL_MS + 1);
    expect(workerOf(b, key)).toBe(home);
    b.observe(stateOf(b, home), "r=1;w=0;kv=0.2");
    expect(workerOf(b, key)).toBe(home);
  });

  test("round robin takes the replicas in turn, skipping the ones excluded, load blind", () => {
    const { b } = balancer(1);
    expect(affinityKey("round_robin", "s1", { messages: [system] }, chat)).toBe(ROUND_ROBIN);
    stateOf(b, "w2").inflight = 50;
    const order = Array.from({ length: 8 }, () => workerOf(b, ROUND_ROBIN));
    expect(order).toEqual(["w1", "w2", "w3", "w4", "w1", "w2", "w3", "w4"]);
    const tried = new Set([stateOf(b, "w1").key]);
    expect(b.pick(replicas, tried, ROUND_ROBIN)?.route.worker_id).toBe("w2");
  });

  test("round robin: a retry leaves the turn, so a failing replica is not every request's first", () => {
    const { b } = balancer(1);
    const two = replicas.slice(0, 2);
    const firsts: string[] = [];
    for (let request = 0; request < 6; request++) {
      const first = b.pick(two, none, ROUND_ROBIN);
      firsts.push(first?.route.worker_id ?? "none");
      // w1 fails every time it is tried (below its ejection threshold): retry on the other.
      if (first?.route.worker_id === "w1") {
        const retry = b.pick(two, new Set([first.state.key]), ROUND_ROBIN);
        expect(retry?.route.worker_id).toBe("w2");
      }
    }
    expect(firsts).toEqual(["w1", "w2", "w1", "w2", "w1", "w2"]);
  });

  test("least loaded counts the engine's running and waiting, not only this router's", () => {
    const { b } = balancer(3);
    const two = replicas.slice(0, 2);
    b.observe(b.state(two[0] as RouteEntry), "r=12;w=3");
    for (let i = 0; i < 50; i++) expect(b.pick(two, none)?.route.worker_id).toBe("w2");
    // What this router sent since the header counts on top.
    b.observe(b.state(two[1] as RouteEntry), "r=14;w=0");
    b.state(two[1] as RouteEntry).inflight = 2;
    expect(b.load(b.state(two[1] as RouteEntry))).toBe(16);
    for (let i = 0; i < 50; i++) expect(b.pick(two, none)?.route.worker_id).toBe("w1");
  });

  test("least loaded: the other routers' share is the report less this router's requests there when it sent", () => {
    const { b, advance } = balancer(1);
    const [w1] = replicas as [RouteEntry];
    const state = b.state(w1);
    // Three of this router's requests in flight on w1 when it sent the one whose answer
    // reports 5 running there: 2 are other routers'.
    state.inflight = 3;
    b.observe(state, "r=5;w=0", { at: 1_000_000, inflight: 3 });
    expect(b.load(state)).toBe(5);
    // Two of this router's end: they leave the load at once (the report still counts them).
    state.inflight = 1;
    expect(b.load(state)).toBe(3);
    // A streamed answer's head came a prefill after the request: this router had 1 there
    // when it sent it and 4 more since; the report (taken at the send) knew of the 1, so
    // the others had 3 — which moves the estimate of 2 a quarter of the way.
    b.observe(state, "r=3;w=1", { at: 1_000_000, inflight: 1 });
    state.inflight = 5;
    expect(b.load(state)).toBe(5 + 2 + OTHERS_SMOOTHING * (3 - 2));
    // An answer to an older request does not replace the figures of a newer one.
    b.observe(state, "r=40;w=0", { at: 999_000, inflight: 1 });
    expect(b.load(state)).toBe(5 + 2 + OTHERS_SMOOTHING * (3 - 2));
    // Figures after the last ones faded start the estimate afresh.
    b.observe(state, "r=9;w=0", { at: 1_000_000 + ENGINE_LOAD_FADE_MS, inflight: 5 });
    advance(ENGINE_LOAD_FADE_MS);
    expect(b.load(state)).toBe(5 + 4);
  });

  test("least loaded: one header's sample of the others is smoothed, a lasting one is followed", () => {
    const { b } = balancer(1);
    const [w1] = replicas as [RouteEntry];
    const state = b.state(w1);
    b.observe(state, "r=6;w=0", { at: 1_000_000, inflight: 0 });
    // A momentary burst of the other routers' requests moves the estimate by a quarter.
    b.observe(state, "r=14;w=0", { at: 1_000_000, inflight: 0 });
    expect(b.load(state)).toBe(6 + OTHERS_SMOOTHING * 8);
    // Sustained, it is followed.
    for (let i = 0; i < 30; i++) b.observe(state, "r=14;w=0", { at: 1_000_000, inflight: 0 });
    expect(b.load(state)).toBeCloseTo(14, 2);
  });

  test("least loaded: the other routers' share fades out; this router's own count stays", () => {
    const { b, advance } = balancer(1);
    const [w1] = replicas as [RouteEntry];
    const state = b.state(w1);
    state.inflight = 2;
    b.observe(state, "r=12;w=0", { at: 1_000_000, inflight: 2 });
    expect(b.load(state)).toBe(12);
    advance(ENGINE_LOAD_FADE_MS / 2);
    expect(b.load(state)).toBe(2 + 10 / 2);
    advance(ENGINE_LOAD_FADE_MS / 2);
    expect(b.load(state)).toBe(2);
    // A replica reported busy is not shunned for longer than that: with equal own counts,
    // least loaded takes it again.
    const others = replicas.slice(1);
    for (const other of others) b.state(other).inflight = 2;
    b.observe(state, "r=30;w=0", { at: 1_000_000 + ENGINE_LOAD_FADE_MS, inflight: 2 });
    expect(b.pick(replicas, none)?.route.worker_id).not.toBe("w1");
    advance(ENGINE_LOAD_FADE_MS);
    state.inflight = 1;
    for (let i = 0; i < 20; i++) expect(b.pick(replicas, none)?.route.worker_id).toBe("w1");
  });

  test("least loaded scores every replica up to SCORE_ALL_UP_TO: the least loaded always wins", () => {
    const { b } = balancer(5);
    const eight = Array.from({ length: SCORE_ALL_UP_TO }, (_, i) =>
      route({ alias: "m", workerId: `r${i}`, url: `http://r${i}.test` }),
    );
    eight.forEach((entry, i) => {
      b.state(entry).inflight = i === 5 ? 1 : 3;
    });
    for (let i = 0; i < 100; i++) expect(b.pick(eight, none)?.route.worker_id).toBe("r5");
  });

  test("loads from the manager seed replicas this router has not heard from; a fresher header wins", () => {
    const { b } = balancer(1);
    const key = "p:seeded conversation";
    const home = workerOf(b, key) as string;
    const homeLoad = (waiting: number, age_s: number) => ({
      alias: "m",
      worker_id: home,
      load: { running: 1, waiting, kv: 0.5, hit: null },
      age_s,
    });
    b.seed(replicas, [homeLoad(3, 2)], 500);
    expect(stateOf(b, home).engine?.waiting).toBe(3);
    expect(workerOf(b, key)).not.toBe(home);
    // The replica's own answer is fresher than a heartbeat from seconds ago. (The others
    // as busy as home's smoothed estimate of ~3, so that only the queue decides.)
    for (const route of replicas) if (route.worker_id !== home) b.state(route).inflight = 3;
    b.observe(stateOf(b, home), "r=1;w=0");
    b.seed(replicas, [homeLoad(5, 1)], 0);
    expect(stateOf(b, home).engine?.waiting).toBe(0);
    expect(workerOf(b, key)).toBe(home);
    // Loads of routes no longer in the table are ignored.
    b.seed(replicas, [{ ...homeLoad(9, 0), worker_id: "gone" }], 0);
    expect(stateOf(b, home).engine?.waiting).toBe(0);
  });
});

describe("route loads from the manager", () => {
  test("the poller fetches GET /v1/route-loads after each revalidation, and stops on 404", async () => {
    let loadsCalls = 0;
    let serveLoads = true;
    const manager = Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      fetch(request) {
        const path = new URL(request.url).pathname;
        if (path === "/v1/routes")
          return Response.json({ version: "1", routes: replicas, api_keys: [] });
        if (path === "/v1/route-loads") {
          loadsCalls++;
          if (!serveLoads) return new Response(null, { status: 404 });
          return Response.json({
            loads: [
              {
                alias: "m",
                worker_id: "w1",
                load: { running: 2, waiting: 1, kv: 0.3, hit: 0.5 },
                age_s: 1.5,
              },
            ],
          });
        }
        return new Response(null, { status: 404 });
      },
    });
    try {
      const poller = new SnapshotPoller({ managerUrl: `http://127.0.0.1:${manager.port}` });
      await poller.refresh();
      await eventually(() => poller.loads() !== undefined, { what: "route loads" });
      expect(poller.loads()?.loads[0]?.load.waiting).toBe(1);
      serveLoads = false;
      await poller.refresh();
      await eventually(() => loadsCalls === 2, { what: "the 404" });
      await poller.refresh();
      await poller.refresh();
      expect(loadsCalls).toBe(2);
      expect(poller.loads()?.loads[0]?.worker_id).toBe("w1"); // the last ones kept
    } finally {
      manager.stop(true);
    }
  });
});
