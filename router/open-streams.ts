import type { Logger } from "../kit/log.ts";
import { type ClosingServer, within } from "../kit/shutdown.ts";

/**
 * The responses a router is relaying right now, so that a router that shuts down ends each
 * one cleanly instead of cutting it: an event stream gets an error event in OpenAI's shape
 * and `data: [DONE]` (an SDK raises a retryable error rather than hanging or taking half an
 * answer as whole), any other body ends as a failure; the agent is told to stop (the GPU
 * goes free) and the request is recorded as 503.
 *
 *   const streams = new OpenStreams();
 *   const app = createApp({ ..., streams });
 *   // on SIGTERM, at the shutdown deadline, before the connections are closed:
 *   streams.endAll();   // or shutDown({ server: endingStreamsFirst(server, { ... }) })
 */
export type OpenStream = {
  /** Ends the response now, saying why; a stream that already ended ignores it. */
  end(message: string): void;
};

export const shutdownMessage =
  "the router is shutting down; the response was cut short, retry the request";

export class OpenStreams {
  private readonly open = new Set<OpenStream>();

  add(stream: OpenStream): void {
    this.open.add(stream);
  }

  delete(stream: OpenStream): void {
    this.open.delete(stream);
  }

  /** How many responses are being relayed. */
  get size(): number {
    return this.open.size;
  }

  /** Ends every open response (see above); returns how many there were. */
  endAll(message = shutdownMessage): number {
    const streams = [...this.open];
    this.open.clear();
    for (const stream of streams) stream.end(message);
    return streams.length;
  }
}

/**
 * A server for `shutDown` (kit/shutdown.ts) whose open streams end cleanly before the deadline
 * cuts the connections: at the deadline `endStreams` runs first (an error event and [DONE] on
 * each event stream), their last bytes get `graceMs` to leave, then whatever is still open is
 * closed as before.
 */
export function endingStreamsFirst(
  server: ClosingServer,
  options: { endStreams: () => number; log: Logger; graceMs?: number },
): ClosingServer {
  let closed: Promise<void> | undefined;
  return {
    close: () => {
      closed ??= server.close();
      return closed;
    },
    async closeAll() {
      const ended = options.endStreams();
      if (ended > 0) {
        options.log.info("open streams ended", { streams: ended });
        if (closed) await within(closed, options.graceMs ?? 1000);
      }
      await server.closeAll();
    },
  };
}
