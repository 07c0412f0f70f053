import type { FastifyReply } from "fastify";

/**
 * A Server-Sent Events response (text/event-stream) written straight to the socket: Fastify hands
 * the reply over (hijack), so nothing is buffered between a token and the client. The headers go
 * out at once (the client knows its turn has begun), and a comment line (`: keep-alive`) is sent
 * after `heartbeatMs` without events (a long prefill), which clients ignore and proxies count as traffic.
 */
export class EventStream {
  private readonly raw: FastifyReply["raw"];
  private readonly heartbeat: NodeJS.Timeout;

  constructor(reply: FastifyReply, heartbeatMs: number) {
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
    this.raw.flushHeaders();
    this.heartbeat = setInterval(() => this.write(": keep-alive\n\n"), heartbeatMs);
    this.heartbeat.unref();
  }

  get open(): boolean {
    return !this.raw.writableEnded && !this.raw.destroyed;
  }

  private write(text: string): void {
    if (this.open) this.raw.write(text);
  }

  /** One event: `event: <name>` (omitted for unnamed events) and the JSON data. */
  send(data: unknown, event?: string): void {
    this.heartbeat.refresh();
    this.write(
      `${event ? `event: ${event}\n` : ""}data: ${typeof data === "string" ? data : JSON.stringify(data)}\n\n`,
    );
  }

  end(): void {
    clearInterval(this.heartbeat);
    if (this.open) this.raw.end();
  }
}
