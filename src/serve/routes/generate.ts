import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import { type ServeContext, requestSignal } from "../context.js";
import type { GenerationRequest, GenerationResult } from "../engine.js";
import { newGenerationId, recordGeneration } from "../feedback.js";
import { type GenerateBody, generateBodySchema, stopList } from "../schemas.js";
import { streamGeneration } from "../streaming.js";

/**
 * POST /v1/generate: the native endpoint, every sampling option of the runtime. Omitted options take
 * the model's genai_config.json `search` defaults. `stream: true` answers Server-Sent Events:
 * `token` per generated token, then `done` with the same body as the JSON answer.
 */
export function generateRoutes(app: FastifyInstance, ctx: ServeContext): void {
  app.post(
    "/v1/generate",
    { schema: { body: generateBodySchema(ctx.maxTokensLimit) } },
    async (request: FastifyRequest, reply: FastifyReply) => {
      const body = request.body as GenerateBody;
      const generation: GenerationRequest = {
        prompt: body.prompt,
        ...(body.max_tokens !== undefined && { maxTokens: body.max_tokens }),
        ...(body.temperature !== undefined && { temperature: body.temperature }),
        ...(body.top_k !== undefined && { topK: body.top_k }),
        ...(body.top_p !== undefined && { topP: body.top_p }),
        ...(body.repetition_penalty !== undefined && { repetitionPenalty: body.repetition_penalty }),
        ...(body.seed !== undefined && { seed: body.seed }),
        ...(body.stop !== undefined && { stop: stopList(body.stop) }),
        ...(body.ignore_eos !== undefined && { ignoreEos: body.ignore_eos }),
      };
      const signal = requestSignal(ctx, reply);
      // The id names this generation in POST /v1/feedback.
      const id = newGenerationId();
      const answer = (r: GenerationResult) => {
        recordGeneration(ctx, id, body.prompt, r);
        return answerBody(r);
      };
      const answerBody = (r: GenerationResult) => ({
        id,
        model: ctx.model.id,
        text: r.text,
        tokens: r.ids,
        stop_reason: r.stopReason,
        seed: r.seed,
        usage: { prompt_tokens: r.promptTokens, completion_tokens: r.ids.length },
        timings: r.timings,
      });
      if (!body.stream) return answer(await ctx.engine.run("generate", generation, signal));
      return streamGeneration(ctx, request, reply, "generate", generation, signal, {
        token: (d) => ({ event: "token", data: d }),
        done: (r) => [{ event: "done", data: answer(r) }],
        error: (e) => ({ event: "error", data: e }),
      });
    },
  );
}
