/** `fetch` as our services call it; entries may pass a runtime-tuned one (undici on Node). */
export type FetchLike = (input: string | URL | Request, init?: RequestInit) => Promise<Response>;
