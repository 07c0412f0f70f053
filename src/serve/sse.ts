import type { FastifyReply } from "fastify";

/**
 * A Server-Sent Events response (text/event-stream) written straight to the socket: Fastify hands
 * the reply over (hijack), so nothing is buffered between a token and the client.
 */
export class EventStream {
  private readonly raw: FastifyReply["raw"];

  constructor(reply: FastifyReply) {
    this.raw = reply.raw;
    // Headers set before the hand-over (x-request-id) are kept.
    const inherited = Object.fromEntries(
      Object.entries(reply.getHeaders()).filter(
        (e): e is [string, string | number | string[]] => e[1] !== undefined,
      ),
    );
    reply.hijack();
    this.raw.writeHead(200, {
      ...inherited,
      "content-type": "text/event-stream; charset=utf-8",
      "cache-control": "no-cache",
      connection: "keep-alive",
      // nginx and similar proxies would otherwise buffer the stream.
      "x-accel-buffering": "no",
    });
  }

  get open(): boolean {
    return !this.raw.writableEnded && !this.raw.destroyed;
  }

  /** One event: `event: <name>` (omitted for unnamed events) and the JSON data. */
  send(data: unknown, event?: string): void {
    if (!this.open) return;
    this.raw.write(
      `${event ? `event: ${event}\n` : ""}data: ${typeof data === "string" ? data : JSON.stringify(data)}\n\n`,
    );
  }

  end(): void {
    if (this.open) this.raw.end();
  }
}
