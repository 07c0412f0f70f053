/**
 * The on-device agent's HTTP API (`itera-agent serve`, docs/serve.md): health, info, generation
 * (JSON or Server-Sent Events), an OpenAI-compatible completions subset and Prometheus metrics.
 */
export { ApiError, type ApiErrorBody } from "./errors.js";
export { Engine, type GenerationRequest, type GenerationResult } from "./engine.js";
export { defaultRateLimit, type HttpPolicy } from "./http-policy.js";
export { ServeMetrics } from "./metrics.js";
export { Cancelled, QueueRejected, TurnQueue } from "./queue.js";
export {
  createServer,
  DEFAULT_MAX_TOKENS_LIMIT,
  DEFAULT_QUEUE,
  type ServeOptions,
  type Server,
  stderrLogger,
} from "./server.js";
