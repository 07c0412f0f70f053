import type { FastifyReply, FastifyRequest } from "fastify";
import type { ServeContext } from "./context.js";
import type { GenerationRequest, GenerationResult, TokenDelta } from "./engine.js";
import { type ApiErrorBody, toApiError } from "./errors.js";
import { Cancelled } from "./queue.js";
import { EventStream } from "./sse.js";

/** How an endpoint words its stream: the event name (undefined: unnamed) and data of each event. */
export interface StreamFormat {
  token(delta: TokenDelta): { event?: string; data: unknown } | undefined;
  /** The closing events (final figures; OpenAI's `[DONE]`). */
  done(result: GenerationResult): { event?: string; data: unknown }[];
  error(body: ApiErrorBody): { event?: string; data: unknown };
}

/**
 * Run a generation as a Server-Sent Events stream. Until the turn starts, errors (400, 503) are
 * ordinary JSON responses; afterwards an error is the stream's last event. A client that leaves ends
 * the generation at its next token.
 */
export async function streamGeneration(
  ctx: ServeContext,
  request: FastifyRequest,
  reply: FastifyReply,
  endpoint: string,
  generation: GenerationRequest,
  signal: AbortSignal,
  format: StreamFormat,
): Promise<FastifyReply> {
  let stream: EventStream | undefined;
  const send = (e: { event?: string; data: unknown } | undefined) => {
    if (e) stream?.send(e.data, e.event);
  };
  try {
    const result = await ctx.engine.run(endpoint, generation, signal, {
      onStart: () => {
        stream = new EventStream(reply, ctx.heartbeatMs);
      },
      onToken: (delta) => send(format.token(delta)),
    });
    for (const e of format.done(result)) send(e);
  } catch (e) {
    if (!stream) throw e;
    if (e instanceof Cancelled) request.log.info("the client left: generation cancelled");
    else {
      const api = toApiError(e);
      if (api.statusCode === 503) request.log.info(api.message);
      else request.log.error({ err: e }, "generation failed mid-stream");
      send(format.error(api.toJSON()));
    }
  } finally {
    stream?.end();
  }
  return reply;
}
