import { randomUUID } from "node:crypto";
import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import type { StopReason } from "../../runtime/index.js";
import { type ServeContext, requestSignal } from "../context.js";
import type { GenerationRequest, GenerationResult } from "../engine.js";
import { recordGeneration } from "../feedback.js";
import { type CompletionsBody, completionsBodySchema, stopList } from "../schemas.js";
import { streamGeneration } from "../streaming.js";

/** OpenAI's finish_reason: "stop" for the end-of-text token or a stop string, "length" for a limit. */
function finishReason(s: StopReason): "stop" | "length" {
  return s === "eos" || s === "stop" ? "stop" : "length";
}

/*
 * The OpenAI-compatible subset: GET /v1/models and POST /v1/completions (docs/serve.md lists the
 * fields), so OpenAI clients and tools work with base_url http://<device>:8080/v1.
 */

/**
 * GET /v1/models: OpenAI's model list, which clients and tools call first; this server has one.
 */
export function modelsRoutes(app: FastifyInstance, ctx: ServeContext): void {
  const started = Math.floor(Date.now() / 1000);
  app.get("/v1/models", async () => ({
    object: "list",
    data: [{ id: ctx.model.id, object: "model", created: started, owned_by: "itera" }],
  }));
}

/**
 * POST /v1/completions: the subset of OpenAI's legacy completions API that maps onto the runtime
 * (docs/serve.md lists it), with OpenAI's defaults (max_tokens 16, temperature 1, top_p 1, no top-k,
 * no repetition penalty), so OpenAI clients and tools work unchanged.
 */
export function completionsRoutes(app: FastifyInstance, ctx: ServeContext): void {
  app.post(
    "/v1/completions",
    { schema: { body: completionsBodySchema(ctx.maxTokensLimit) } },
    async (request: FastifyRequest, reply: FastifyReply) => {
      const body = request.body as CompletionsBody;
      const prompt =
        Array.isArray(body.prompt) && typeof body.prompt[0] === "string" ? body.prompt[0] : body.prompt;
      const stop = stopList(body.stop);
      const generation: GenerationRequest = {
        prompt: prompt as string | number[],
        maxTokens: body.max_tokens ?? 16,
        temperature: body.temperature ?? 1,
        topP: body.top_p ?? 1,
        topK: 0,
        repetitionPenalty: 1,
        ...(body.seed != null && { seed: body.seed }),
        ...(stop && { stop }),
      };
      const signal = requestSignal(ctx, reply);
      const head = {
        id: `cmpl-${randomUUID()}`,
        object: "text_completion",
        created: Math.floor(Date.now() / 1000),
        model: ctx.model.id,
      };
      const choice = (text: string, finish: "stop" | "length" | null) => ({
        text,
        index: 0,
        logprobs: null,
        finish_reason: finish,
      });
      const usage = (r: GenerationResult) => ({
        prompt_tokens: r.promptTokens,
        completion_tokens: r.ids.length,
        total_tokens: r.promptTokens + r.ids.length,
      });
      if (!body.stream) {
        const r = await ctx.engine.run("completions", generation, signal);
        recordGeneration(ctx, head.id, generation.prompt, r);
        return { ...head, choices: [choice(r.text, finishReason(r.stopReason))], usage: usage(r) };
      }
      return streamGeneration(ctx, request, reply, "completions", generation, signal, {
        token: (d) => (d.text ? { data: { ...head, choices: [choice(d.text, null)] } } : undefined),
        done: (r) => {
          recordGeneration(ctx, head.id, generation.prompt, r);
          return [
            { data: { ...head, choices: [choice("", finishReason(r.stopReason))] } },
            // OpenAI's stream_options.include_usage: one more chunk, with no choices and the usage.
            ...(body.stream_options?.include_usage
              ? [{ data: { ...head, choices: [], usage: usage(r) } }]
              : []),
            { data: "[DONE]" },
          ];
        },
        error: (e) => ({ data: e }),
      });
    },
  );
}
