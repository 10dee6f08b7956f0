import {
  type EngineLoad,
  parseLoadHeader,
  type RouteEntry,
  type RouteLoad,
} from "../protocol/index.ts";
import { ROUND_ROBIN } from "./policy.ts";

/**
 * Replica selection and passive health.
 *
 * - Least loaded: the replica with the least load of all (up to `SCORE_ALL_UP_TO`
 *   replicas; ties at random), or the less loaded of two random ones beyond. A replica's
 *   load is this router's requests in flight there now plus the other routers' share of
 *   the engine's own running + waiting from the last `x-fleet-load` header its agent sent
 *   (protocol/load.ts): the reported figure less what this router had in flight there when
 *   it sent the request that brought it, averaged over the headers (`OTHERS_SMOOTHING`)
 *   and fading out over `ENGINE_LOAD_FADE_MS` (`load()`).
 * - Affinity (prefix or session, policy.ts) by rendezvous hashing over the alias's ready
 *   replicas with a load bound (consistent hashing with bounded loads): the same key lands
 *   on the same replica (warm prefix cache) unless that replica's load is `LOAD_SLACK` (4),
 *   or an eighth of the least load when that is more, over the least loaded available
 *   replica's, or its engine has a queue; then the request walks on to the next replica in
 *   the key's own ranking (no global reshuffle). Nothing random: every router with the
 *   same loads makes the same choice.
 * - Openings: a conversation's first request (no assistant turn yet, policy.ts) has nothing
 *   of its own in any replica's cache, so it goes to the least loaded replica, the key's
 *   ranking deciding only among equally loaded ones. Its next turns go to the key's home
 *   under the bound; when the opening landed elsewhere, the second turn re-reads the first
 *   exchange (a few hundred tokens) and the conversation stays home from then on. Holding
 *   openings to the bound as well queued one-shot prompts, which share nothing, behind
 *   busier replicas (docs/router.md "Balancing").
 * - Passive ejection: after `ejectAfter` consecutive transport failures (connect errors,
 *   resets, timeouts, 502/503/504 from the agent) a replica is skipped for a cool-down
 *   that doubles on each failed probe; after it, exactly one request probes it (half-open)
 *   and only a success brings it back. 4xx and client aborts never count.
 * - Active ejection: a replica whose waiting request's health check goes unanswered
 *   (attempt.ts, replica-check.ts) is ejected at once, whatever its failure count.
 */

export type ReplicaState = {
  readonly key: string;
  /** `hash32(key)`, for the rendezvous ranking (`rendezvousScore`). */
  readonly hash: number;
  inflight: number;
  consecutiveFailures: number;
  /** 0 = healthy; otherwise ejected until this time (ms), then half-open. */
  ejectedUntil: number;
  /** Consecutive ejections, for the doubling cool-down. */
  ejections: number;
  probing: boolean;
  /** The engine's load from the last `x-fleet-load` header, when the request that brought
   * it was sent, and the other routers' share of it (smoothed over the headers). */
  engine: EngineLoad | null;
  engineAt: number;
  /** The other routers' share of the engine's load, smoothed over the headers. */
  others: number;
};

/** Engine load older than this is ignored (the agent reads it once a second). */
export const ENGINE_LOAD_TTL_MS = 10_000;
/**
 * The other routers' share of an engine's reported load counts in full when the request
 * that brought it was sent and fades to nothing over this: this router sees its own
 * requests end, not theirs, and a figure it keeps until its next answer from there would
 * keep a replica looking busy (or idle) long after it stopped being so. Long enough that a
 * slow replica, which this router hears from seldom, keeps its others' share while their
 * requests run (2 s let it look idle and cost 3–20% of throughput with one slowed).
 */
export const ENGINE_LOAD_FADE_MS = 5_000;
/** Least loaded scores every replica up to this many, and two random ones beyond. */
export const SCORE_ALL_UP_TO = 8;
/**
 * Each header's sample of the other routers' share moves the estimate this far (an
 * exponential average over ~4 headers): one sample is the other routers' count at one
 * instant, noise that made least_loaded a few percent worse than counting nothing.
 */
export const OTHERS_SMOOTHING = 0.25;
/**
 * Affinity's load bound: a later turn keeps its replica while that replica's load is less
 * than this many requests over the least loaded available replica's, and walks on in its
 * own ranking once it is not. Measured against the least loaded rather than the mean, and
 * as a difference rather than a factor (docs/router.md "Balancing"). Openings are placed by
 * load alone, so the bound only ever weighs a warm prefix — most of a later turn's prefill
 * — against the requests queued ahead of it, each itself mostly cached: swept at 2, 3 and 4
 * (and 4 with half the least load) once openings went by load, 4 kept 90.6% of the chat
 * workload's prefix hits against 85.2% at 2 (TTFT p50 ×0.25 of least-in-flight's against
 * ×0.44), with p99 no worse and a slowed replica's share as low as least-in-flight makes it.
 */
export const LOAD_SLACK = 4;

/**
 * At high load the slack grows with the least loaded replica's load (an eighth of it): an
 * engine batching 60–100 sequences swings by more than a few requests from one arrival to
 * the next, and a fixed slack would then walk most conversations off their warm replicas
 * just when prefill savings matter most. Below 32 requests in flight it is `LOAD_SLACK`
 * alone, the value the benchmark chose (docs/router.md "Balancing").
 */
export const LOAD_SLACK_SHARE = 1 / 8;

/** The load under which a replica keeps its keys, given the least loaded replica's load. */
export function loadBound(leastLoad: number): number {
  return leastLoad + Math.max(LOAD_SLACK, leastLoad * LOAD_SLACK_SHARE);
}

/** The replica `pick` chose; `probe`: it is ejected and this request is its half-open probe. */
export type Choice = { route: RouteEntry; state: ReplicaState; probe: boolean };

export type BalancerOptions = {
  ejectAfter: number;
  cooldownMs: number;
  maxCooldownMs: number;
  now: () => number;
  random?: () => number;
  onEject?: (route: RouteEntry, cooldownMs: number) => void;
};

export function replicaKey(route: RouteEntry): string {
  return `${route.alias}|${route.instance_id}|${route.worker_url}`;
}

/** 32-bit FNV-1a followed by a murmur3 finaliser: cheap, well mixed, same on every runtime. */
export function hash32(text: string): number {
  let hash = 0x811c9dc5;
  for (let index = 0; index < text.length; index++) {
    hash ^= text.charCodeAt(index);
    hash = Math.imul(hash, 0x01000193);
  }
  return fmix32(hash);
}

/**
 * A replica's rank for a key under rendezvous hashing (higher first): the key's and the
 * replica's hashes combined and mixed again, so each key orders the replicas independently
 * of every other key. Numbers only: no string per replica per request.
 */
export function rendezvousScore(keyHash: number, replicaHash: number): number {
  return fmix32(keyHash ^ Math.imul(replicaHash, 0x9e3779b1));
}

/** murmur3's 32-bit finaliser: every input bit moves every output bit. */
function fmix32(value: number): number {
  let hash = value;
  hash ^= hash >>> 16;
  hash = Math.imul(hash, 0x85ebca6b);
  hash ^= hash >>> 13;
  hash = Math.imul(hash, 0xc2b2ae35);
  hash ^= hash >>> 16;
  return hash >>> 0;
}

export class Balancer {
  private readonly states = new Map<string, ReplicaState>();
  /** Each route object's replica key, made once (a snapshot's routes are never changed). */
  private readonly keys = new WeakMap<RouteEntry, string>();
  private readonly random: () => number;
  private turn = 0;

  constructor(private readonly options: BalancerOptions) {
    this.random = options.random ?? Math.random;
  }

  state(route: RouteEntry): ReplicaState {
    let key = this.keys.get(route);
    if (key === undefined) {
      key = replicaKey(route);
      this.keys.set(route, key);
    }
    let state = this.states.get(key);
    if (!state) {
      state = {
        key,
        hash: hash32(key),
        inflight: 0,
        consecutiveFailures: 0,
        ejectedUntil: 0,
        ejections: 0,
        probing: false,
        engine: null,
        engineAt: 0,
        others: 0,
      };
      this.states.set(key, state);
    }
    return state;
  }

  /** Forgets replicas that left the route table (their in-flight requests keep their state object). */
  retain(routes: readonly RouteEntry[]): void {
    const keep = new Set(routes.map(replicaKey));
    for (const key of this.states.keys()) if (!keep.has(key)) this.states.delete(key);
  }

  private available(state: ReplicaState, now: number): boolean {
    if (state.ejectedUntil === 0) return true;
    return now >= state.ejectedUntil && !state.probing;
  }

  /** A replica's load now: see the class comment. */
  load(state: ReplicaState, now = this.options.now()): number {
    const engine = state.engine;
    if (!engine) return state.inflight;
    const age = now - state.engineAt;
    if (age >= ENGINE_LOAD_FADE_MS) return state.inflight;
    // The other routers' share (observe()), which this router cannot see end: it fades.
    return state.inflight + state.others * (1 - age / ENGINE_LOAD_FADE_MS);
  }

  /** Whether the replica's engine reported a waiting queue (fresh figures only). */
  private queued(state: ReplicaState, now: number): boolean {
    return (
      state.engine !== null &&
      now - state.engineAt <= ENGINE_LOAD_TTL_MS &&
      state.engine.waiting > 0
    );
  }

  /**
   * An answer's `x-fleet-load` header: the engine's load as its agent last read it. `sent`
   * is when this router sent the request that brought it and how many requests it had in
   * flight there then (that one included): the figures describe the engine around then,
   * not when the header arrives — a streamed answer's head can come with its first token,
   * a whole prefill later, by when this router's count there has moved on.
   */
  observe(
    state: ReplicaState,
    header: string | null,
    sent: { at: number; inflight: number } = { at: this.options.now(), inflight: state.inflight },
  ): void {
    const load = parseLoadHeader(header);
    if (!load) return;
    // Answers overtake each other; an older request's figures do not replace newer ones.
    if (state.engine !== null && sent.at < state.engineAt) return;
    // The engine's running + waiting counted this router's requests in flight then; the
    // rest is the other routers' share.
    const sample = Math.max(0, load.running + load.waiting - sent.inflight);
    const fresh = state.engine !== null && sent.at - state.engineAt < ENGINE_LOAD_FADE_MS;
    state.others = fresh ? state.others + OTHERS_SMOOTHING * (sample - state.others) : sample;
    state.engine = load;
    state.engineAt = sent.at;
  }

  /**
   * Loads from the manager (heartbeats, `GET /v1/route-loads`): each one `ageMs` old is
   * taken for a replica whose own last `x-fleet-load` is older still.
   */
  seed(routes: readonly RouteEntry[], loads: readonly RouteLoad[], extraAgeMs: number): void {
    const now = this.options.now();
    const byRoute = new Map<string, RouteEntry>();
    for (const route of routes) byRoute.set(`${route.alias}\u0000${route.worker_id}`, route);
    for (const entry of loads) {
      const route = byRoute.get(`${entry.alias}\u0000${entry.worker_id}`);
      if (!route) continue;
      const state = this.state(route);
      const at = now - entry.age_s * 1000 - Math.max(0, extraAgeMs);
      if (state.engine !== null && state.engineAt >= at) continue;
      state.engine = entry.load;
      state.engineAt = at;
      state.others = Math.max(0, entry.load.running + entry.load.waiting - state.inflight);
    }
  }

  /**
   * Chooses a replica among `candidates` not in `exclude`; undefined when none is
   * available (all tried, ejected, or being probed). With `affinityKey` (policy.ts), by
   * bounded-load rendezvous hashing; without, least loaded (of all, or of two beyond
   * `SCORE_ALL_UP_TO`). An `opening` request with a key goes to the least loaded replica,
   * the first in the key's ranking among those equally least loaded (class comment).
   */
  pick(
    candidates: readonly RouteEntry[],
    exclude: ReadonlySet<string>,
    affinityKey?: string,
    opening = false,
  ): Choice | undefined {
    const now = this.options.now();
    if (affinityKey === ROUND_ROBIN) return this.pickInTurn(candidates, exclude, now);
    if (affinityKey !== undefined) {
      return this.pickAffine(candidates, exclude, affinityKey, opening, now);
    }
    if (candidates.length <= SCORE_ALL_UP_TO) {
      let best: RouteEntry | undefined;
      let bestLoad = 0;
      let ties = 0;
      for (const route of candidates) {
        const state = this.state(route);
        if (exclude.has(state.key) || !this.available(state, now)) continue;
        const load = this.load(state, now);
        if (!best || load < bestLoad) {
          best = route;
          bestLoad = load;
          ties = 1;
        } else if (load === bestLoad) {
          ties++;
          if (this.random() * ties < 1) best = route;
        }
      }
      return best ? this.claim(best) : undefined;
    }
    let first: RouteEntry | undefined;
    let second: RouteEntry | undefined;
    let seen = 0;
    // Reservoir-sample two distinct available candidates in one pass, no allocation.
    for (const route of candidates) {
      const state = this.state(route);
      if (exclude.has(state.key) || !this.available(state, now)) continue;
      seen++;
      if (seen === 1) first = route;
      else if (seen === 2) second = route;
      else {
        const slot = Math.floor(this.random() * seen);
        if (slot === 0) first = route;
        else if (slot === 1) second = route;
      }
    }
    if (!first) return undefined;
    let chosen = first;
    if (second) {
      const a = this.load(this.state(first), now);
      const b = this.load(this.state(second), now);
      if (b < a) chosen = second;
      else if (b === a && this.random() < 0.5) chosen = second;
    }
    return this.claim(chosen);
  }

  /**
   * The next available replica in turn. Only a request's first pick moves the turn on: a
   * retry takes the next replica it has not tried and leaves the turn where it was, so a
   * failing replica costs each request that meets it one retry, and is not met first by
   * every request (with two replicas and one failing, a turn moved by each retry would send
   * every request to the failing one first).
   */
  private pickInTurn(
    candidates: readonly RouteEntry[],
    exclude: ReadonlySet<string>,
    now: number,
  ): Choice | undefined {
    const count = candidates.length;
    for (let step = 0; step < count; step++) {
      const route = candidates[(this.turn + step) % count] as RouteEntry;
      const state = this.state(route);
      if (exclude.has(state.key) || !this.available(state, now)) continue;
      if (exclude.size === 0) this.turn = (this.turn + step + 1) % count;
      return this.claim(route);
    }
    return undefined;
  }

  private pickAffine(
    candidates: readonly RouteEntry[],
    exclude: ReadonlySet<string>,
    key: string,
    opening: boolean,
    now: number,
  ): Choice | undefined {
    const ranked: Ranked[] = [];
    // The key (up to a few thousand characters of prompt) is hashed once, then combined
    // with each replica's hash.
    const keyHash = hash32(key);
    for (const route of candidates) {
      const state = this.state(route);
      if (exclude.has(state.key) || !this.available(state, now)) continue;
      const load = this.load(state, now);
      ranked.push({ route, state, score: rendezvousScore(keyHash, state.hash), load });
    }
    if (ranked.length === 0) return undefined;
    // Under the bound: less than the slack over the least loaded available replica.
    let least = ranked[0] as Ranked;
    for (const entry of ranked) {
      if (entry.load < least.load || (entry.load === least.load && ranksBefore(entry, least))) {
        least = entry;
      }
    }
    // An opening has nothing of its own cached anywhere: load alone decides, the key only
    // among equals (so an idle fleet still sends it where its next turns will look).
    if (opening) return this.claim(least.route);
    const bound = loadBound(least.load);
    // In ranking order (highest score first; equal scores, a 32-bit collision, by replica key,
    // so the order is the same in every router), without sorting: the first replica under the
    // bound and not queued; when every one is over it or queued, the least loaded, the first
    // in ranking order on ties.
    let best: Ranked | undefined;
    for (const entry of ranked) {
      if (
        entry.load < bound &&
        !this.queued(entry.state, now) &&
        (best === undefined || ranksBefore(entry, best))
      ) {
        best = entry;
      }
    }
    return this.claim((best ?? least).route);
  }

  /** The choice of `route`; an ejected replica's becomes its one half-open probe. */
  private claim(route: RouteEntry): Choice {
    const state = this.state(route);
    const probe = state.ejectedUntil !== 0;
    if (probe) state.probing = true;
    return { route, state, probe };
  }

  /** The earliest time (ms from now) an ejected candidate becomes eligible again. */
  retryAfterMs(candidates: readonly RouteEntry[]): number {
    const now = this.options.now();
    let soonest = Number.POSITIVE_INFINITY;
    for (const route of candidates) {
      const state = this.state(route);
      soonest = Math.min(soonest, Math.max(0, state.ejectedUntil - now));
    }
    return Number.isFinite(soonest) ? soonest : 1000;
  }

  /** The replica answered (any status that is not a transport-level failure). */
  succeeded(state: ReplicaState): void {
    state.consecutiveFailures = 0;
    if (state.ejectedUntil !== 0) {
      state.ejectedUntil = 0;
      state.ejections = 0;
    }
    state.probing = false;
  }

  /** Connect error, reset, timeout, or 502/503/504 from the agent. */
  failed(route: RouteEntry, state: ReplicaState): void {
    state.consecutiveFailures++;
    const wasProbe = state.probing;
    state.probing = false;
    if (
      !wasProbe &&
      (state.ejectedUntil !== 0 || state.consecutiveFailures < this.options.ejectAfter)
    ) {
      return;
    }
    this.ejectNow(route, state);
  }

  /**
   * The replica did not answer a health check while a request waited on it: ejected now
   * (every request waiting there hears the same verdict; the first one ejects, and a
   * replica already cooling down keeps its period).
   */
  eject(route: RouteEntry, state: ReplicaState): void {
    state.consecutiveFailures++;
    state.probing = false;
    if (state.ejectedUntil > this.options.now()) return;
    this.ejectNow(route, state);
  }

  private ejectNow(route: RouteEntry, state: ReplicaState): void {
    state.ejections++;
    const cooldown = Math.min(
      this.options.cooldownMs * 2 ** (state.ejections - 1),
      this.options.maxCooldownMs,
    );
    state.ejectedUntil = this.options.now() + cooldown;
    this.options.onEject?.(route, cooldown);
  }

  /** Neither success nor failure (client went away): free a probe slot. */
  released(state: ReplicaState): void {
    state.probing = false;
  }

  /** Replicas currently ejected (for /metrics). */
  ejectedCount(): number {
    const now = this.options.now();
    let count = 0;
    for (const state of this.states.values()) if (state.ejectedUntil > now) count++;
    return count;
  }
}

/** A candidate of `pickAffine`, with its rendezvous score and its load. */
type Ranked = { route: RouteEntry; state: ReplicaState; score: number; load: number };

/** Rendezvous order: the higher score first; equal scores by replica key. */
function ranksBefore(a: Ranked, b: Ranked): boolean {
  return a.score !== b.score ? a.score > b.score : a.state.key < b.state.key;
}
