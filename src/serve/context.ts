import type { FastifyReply } from "fastify";
import type { Engine } from "./engine.js";
import type { ServeMetrics } from "./metrics.js";
import { Cancelled } from "./queue.js";

/** What the routes share: the model engine, the metrics, the model's identity and the server's limits. */
export interface ServeContext {
  engine: Engine;
  metrics: ServeMetrics;
  /** Model id (card id, bundle model id, else the folder name) and quantization. */
  model: { id: string; quant: string };
  maxTokensLimit: number;
  /** The body of GET /v1/info (hardware detection is slow: computed once, on first use). */
  info: () => Promise<Record<string, unknown>>;
  /**
   * Controllers of the requests in progress; the server aborts them all when it stops, with a 503
   * as the reason (the clients are still there to read it).
   */
  active: Set<AbortController>;
}

/**
 * A signal that aborts when the client closes the connection before the response is complete, or
 * when the server stops: the generation for the request then ends at its next token.
 */
export function requestSignal(ctx: ServeContext, reply: FastifyReply): AbortSignal {
  const controller = new AbortController();
  const raw = reply.raw;
  // The client may already have left while the body was read and validated.
  if (raw.closed || raw.destroyed) {
    controller.abort(new Cancelled());
    return controller.signal;
  }
  ctx.active.add(controller);
  raw.once("close", () => {
    ctx.active.delete(controller);
    if (!raw.writableFinished) controller.abort(new Cancelled());
  });
  return controller.signal;
}
