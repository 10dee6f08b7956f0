import { CHARS_PER_TOKEN, hash32 } from "./text.ts";

/** vLLM's default KV block size in tokens (`--block-size`, shown in `vllm:cache_config_info`). */
export const BLOCK_TOKENS = 16;
const BLOCK_CHARS = BLOCK_TOKENS * CHARS_PER_TOKEN;

/**
 * The chain hashes of a prompt's full blocks, as vLLM's prefix cache keys them: block i's
 * key covers its own tokens and, through the parent's key, every token before it. A partly
 * filled last block has no key (vLLM caches full blocks only). Two 32-bit FNV passes make a
 * 52-bit key, so collisions do not matter at simulator scale.
 */
export function blockHashes(text: string): number[] {
  const count = Math.floor(text.length / BLOCK_CHARS);
  const out = new Array<number>(count);
  let parentA = 0x811c9dc5;
  let parentB = 0x01000193;
  for (let index = 0; index < count; index++) {
    const chunk = text.slice(index * BLOCK_CHARS, (index + 1) * BLOCK_CHARS);
    parentA = hash32(chunk, parentA);
    parentB = hash32(chunk, parentB ^ 0x5bd1e995);
    out[index] = parentA * 0x100000 + (parentB & 0xfffff);
  }
  return out;
}

/**
 * A prefix cache of `capacityBlocks` KV blocks with LRU eviction. `lookup` is what vLLM's
 * scheduler does when it admits a request (count the leading blocks already cached and
 * touch them); `insert` caches a sequence's blocks (its prompt at admission, its prompt and
 * answer at the end, as vLLM keeps a finished request's blocks until they are evicted).
 * Blocks of running requests are not pinned: the simulator's cache is a model of which
 * prefixes are warm, not an allocator.
 */
export class PrefixCache {
  /** Map order is recency: the first key is the least recently used block. */
  private readonly blocks = new Map<number, true>();

  constructor(readonly capacityBlocks: number) {}

  get size(): number {
    return this.blocks.size;
  }

  /** How many leading blocks of `hashes` are cached; those become most recently used. */
  lookup(hashes: readonly number[]): number {
    let matched = 0;
    for (const hash of hashes) {
      if (!this.blocks.has(hash)) break;
      this.blocks.delete(hash);
      this.blocks.set(hash, true);
      matched++;
    }
    return matched;
  }

  insert(hashes: readonly number[]): void {
    if (this.capacityBlocks <= 0) return;
    for (const hash of hashes) {
      this.blocks.delete(hash);
      this.blocks.set(hash, true);
    }
    while (this.blocks.size > this.capacityBlocks) {
      const oldest = this.blocks.keys().next().value as number;
      this.blocks.delete(oldest);
    }
  }
}

/**
 * The chat template the simulator pretends to apply, as text whose length is exactly
 * 4 characters per token of the documented count (3 + Σ(4 + tokens(content))): each message
 * is a 16-character role marker and its content padded to whole tokens, and the prompt
 * ends with a 12-character generation cue. Only prefix-cache keys are derived from it.
 */
export function renderMessage(role: string, content: string): string {
  const marker = `<|${role}|>`.padEnd(16, "\u0001").slice(0, 16);
  const pad = (CHARS_PER_TOKEN - (content.length % CHARS_PER_TOKEN)) % CHARS_PER_TOKEN;
  return marker + content + "\u0001".repeat(pad);
}

export const GENERATION_CUE = "<|assistant|>\u0001\u0001\u0001".slice(0, 12);
