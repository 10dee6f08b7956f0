/** Reading OpenAI-style event streams (`data: …\n\n`, then `data: [DONE]`) in tests and benchmarks. */

/** The `data:` payloads of an event stream's text, `[DONE]` included. */
export function sseData(text: string): string[] {
  return text
    .split("\n\n")
    .filter((event) => event.startsWith("data: "))
    .map((event) => event.slice(6));
}

/**
 * A streamed body read as text, step by step: `until` reads until the text so far contains
 * `marker` (failing if the body ends first), `rest` reads to the end; both return all the
 * text read so far.
 */
export function streamText(response: Response) {
  const reader = (response.body as ReadableStream<Uint8Array>).getReader();
  const decoder = new TextDecoder();
  let text = "";
  return {
    async until(marker: string): Promise<string> {
      while (!text.includes(marker)) {
        const { done, value } = await reader.read();
        if (done) throw new Error(`stream ended before ${JSON.stringify(marker)}: ${text}`);
        text += decoder.decode(value, { stream: true });
      }
      return text;
    },
    async rest(): Promise<string> {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) return text + decoder.decode();
        text += decoder.decode(value, { stream: true });
      }
    },
  };
}
