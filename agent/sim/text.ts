/**
 * The simulator's deterministic "tokenizer": a token is up to 4 characters of text, so a
 * prompt of L characters is ceil(L / 4) tokens. Chat adds a fixed template overhead, as a
 * chat template does. Good enough for context-length checks and usage accounting, and
 * cheap enough for the hot path.
 */
export const CHARS_PER_TOKEN = 4;
/** Tokens a chat template adds per message (role markers) and per prompt (generation cue). */
export const CHAT_TOKENS_PER_MESSAGE = 4;
export const CHAT_TOKENS_PER_PROMPT = 3;

export function countTokens(text: string): number {
  return Math.ceil(text.length / CHARS_PER_TOKEN);
}

export function splitTokens(text: string): string[] {
  const out: string[] = [];
  for (let i = 0; i < text.length; i += CHARS_PER_TOKEN)
    out.push(text.slice(i, i + CHARS_PER_TOKEN));
  return out;
}

/** FNV-1a, for token ids, seeds and embeddings. */
export function hash32(text: string, seed = 0x811c9dc5): number {
  let h = seed >>> 0;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

/** Small fast PRNG (mulberry32) so "random" output is reproducible per prompt and seed. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const WORDS = [
  " the",
  " model",
  " is",
  " a",
  " simulated",
  " engine",
  " that",
  " answers",
  " with",
  " tokens",
  " from",
  " vLLM",
  " GPU",
  " fleet",
  " and",
  " data",
  " of",
  " to",
  " in",
  " for",
];

/**
 * `count` output tokens of filler text. Each word is one token (≤ 4 chars after the space
 * would be more faithful, but readable filler is kinder to people reading test output).
 */
export function fillerTokens(count: number, random: () => number): string[] {
  const out = new Array<string>(count);
  for (let i = 0; i < count; i++) out[i] = WORDS[Math.floor(random() * WORDS.length)] as string;
  return out;
}

/** Deterministic unit vector of `dim` floats for `text`. */
export function embed(text: string, dim: number): number[] {
  const random = prng(hash32(text));
  const vector = new Array<number>(dim);
  let norm = 0;
  for (let i = 0; i < dim; i++) {
    const value = random() * 2 - 1;
    vector[i] = value;
    norm += value * value;
  }
  norm = Math.sqrt(norm) || 1;
  for (let i = 0; i < dim; i++) vector[i] = (vector[i] as number) / norm;
  return vector;
}

/**
 * A relevance score in [0, 1] for a reranker's query and document: the share of words the two
 * have in common (Jaccard, case-insensitive). _Simulator-only_: a cross-encoder's logit is
 * nothing like it, but a document that repeats the query's words ranks first, as a test
 * expects.
 */
export function relevance(query: string, document: string): number {
  const words = (text: string) => new Set(text.toLowerCase().match(/[\p{L}\p{N}]+/gu) ?? []);
  const [a, b] = [words(query), words(document)];
  if (a.size === 0 || b.size === 0) return 0;
  let shared = 0;
  for (const word of a) if (b.has(word)) shared++;
  return shared / (a.size + b.size - shared);
}
