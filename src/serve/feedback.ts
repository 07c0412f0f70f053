import { randomUUID } from "node:crypto";
import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import { z } from "zod";
import type { StoredFeedback, StoredGeneration } from "../agent/store.js";
import { FEEDBACK_LIMITS } from "../protocol/feedback.js";
import type { ServeContext } from "./context.js";
import type { GenerationResult } from "./engine.js";
import { ApiError, badRequest } from "./errors.js";

/**
 * Feedback on generations (docs/serve.md, "Feedback"). Every answered generation gets an id and is
 * recorded in the agent's state store (`agent.db`); `POST /v1/feedback` rates one (+1/-1, optionally
 * with a corrected text) and stores the rating there, and the MQTT agent on the same state folder
 * sends it to the coordinator through its outbox (docs/fleet.md).
 */

/** What the server needs of the store: `AgentStore` on the agent's state folder. */
export interface FeedbackStore {
  recordGeneration(g: StoredGeneration): void;
  generation(id: string): StoredGeneration | undefined;
  putFeedback(f: StoredFeedback): void;
}

export const newGenerationId = (): string => `gen-${randomUUID()}`;

/** Keep a generation (when the server has a store) so that feedback can name it. */
export function recordGeneration(
  ctx: ServeContext,
  id: string,
  prompt: string | readonly number[],
  r: GenerationResult,
): void {
  const store = ctx.feedback;
  if (!store) return;
  const text = typeof prompt === "string" ? prompt : (ctx.engine.loaded?.tokenizer.decode(prompt) ?? "");
  store.recordGeneration({
    id,
    ts: Date.now(),
    model: { id: ctx.model.id, sha256: ctx.model.sha256, quant: ctx.model.quant },
    // The end of the prompt is what the generation continued; the rest would only bloat messages.
    prompt: text.slice(-FEEDBACK_LIMITS.prompt),
    text: r.text.slice(0, FEEDBACK_LIMITS.text),
  });
}

export const feedbackBodySchema = z.strictObject({
  generation_id: z.string().min(1).max(200),
  rating: z.union([z.literal(1), z.literal(-1)]),
  correction: z.string().min(1).max(FEEDBACK_LIMITS.correction).optional(),
  comment: z.string().max(FEEDBACK_LIMITS.comment).optional(),
});
type FeedbackBody = z.infer<typeof feedbackBodySchema>;

export const feedbackFieldHelp: Record<string, string> = {
  generation_id:
    "give 'generation_id' as the 'id' a /v1/generate or /v1/completions answer returned (the server keeps the latest 10,000)",
  rating: "give 'rating' as 1 (good) or -1 (bad)",
  correction: `give 'correction' as the text the model should have generated (1 to ${FEEDBACK_LIMITS.correction} characters), or leave it out`,
  comment: `give 'comment' as a string of at most ${FEEDBACK_LIMITS.comment} characters, or leave it out`,
};

/** POST /v1/feedback: rate a generation this server answered. */
export function feedbackRoutes(app: FastifyInstance, ctx: ServeContext): void {
  app.post(
    "/v1/feedback",
    { schema: { body: feedbackBodySchema } },
    async (request: FastifyRequest, reply: FastifyReply) => {
      const store = ctx.feedback;
      if (!store) {
        throw new ApiError(
          404,
          "not_found_error",
          "feedback is off on this server",
          "/v1/feedback",
          "start `itera-agent serve` without --no-feedback (it records generations in the agent's --state-dir)",
        );
      }
      const body = request.body as FeedbackBody;
      const generation = store.generation(body.generation_id);
      if (!generation) {
        throw badRequest(
          `unknown generation '${body.generation_id}'`,
          "body.generation_id",
          feedbackFieldHelp.generation_id,
        );
      }
      const feedback: StoredFeedback = {
        generationId: generation.id,
        ts: Date.now(),
        rating: body.rating,
        correction: body.correction ?? null,
        comment: body.comment ?? "",
      };
      store.putFeedback(feedback);
      reply.code(201);
      return {
        generation_id: generation.id,
        rating: feedback.rating,
        correction: feedback.correction,
        model: generation.model.id,
        stored: true,
      };
    },
  );
}
