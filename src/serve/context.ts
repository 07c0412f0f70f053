import type { FastifyReply } from "fastify";
import type { ModelRef } from "../protocol/schemas.js";
import type { Engine } from "./engine.js";
import type { FeedbackStore } from "./feedback.js";
import type { ServeMetrics } from "./metrics.js";
import { Cancelled, type QueueLimits } from "./queue.js";
import type { ServeOptions } from "./server.js";

/** What the routes share: the model engine, the metrics, the model's identity and the server's setup. */
export interface ServeContext {
  engine: Engine;
  metrics: ServeMetrics;
  /** Model id (card id, else the folder name), sha256 of the ONNX file, quantization. */
  model: ModelRef;
  maxTokensLimit: number;
  queueLimits: QueueLimits;
  /** Silence after which a stream sends a keep-alive comment. */
  heartbeatMs: number;
  /** How the server was started (model folder, profile, manifest, mode, threads). */
  options: Pick<ServeOptions, "modelDir" | "profile" | "manifest" | "mode" | "threads">;
  /**
   * Controllers of the requests in progress; the server aborts them all when it stops, with a 503
   * as the reason (the clients are still there to read it).
   */
  active: Set<AbortController>;
  /** Generations and their feedback (the agent's store); absent: feedback is off. */
  feedback?: FeedbackStore;
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
