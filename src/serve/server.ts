import { performance } from "node:perf_hooks";
import Fastify, { type FastifyBaseLogger, type FastifyInstance } from "fastify";
import { env } from "onnxruntime-node";
import { type Logger, pino } from "pino";
import { describeModel } from "../agent/bench-runner.js";
import type { BundleIndex } from "../agent-host/bundle-index.js";
import type { DeviceProfile } from "../profile/schema.js";
import type { LanguageModel } from "../runtime/index.js";
import { VERSION } from "../version.js";
import { requireApiKey } from "./auth.js";
import type { ServeContext } from "./context.js";
import { Engine } from "./engine.js";
import { installErrorHandlers, unavailable } from "./errors.js";
import { type FeedbackStore, feedbackFieldHelp, feedbackRoutes } from "./feedback.js";
import { type HttpPolicy, registerHttpPolicy } from "./http-policy.js";
import { ServeMetrics } from "./metrics.js";
import { type QueueLimits, TurnQueue } from "./queue.js";
import { completionsRoutes, modelsRoutes } from "./routes/openai.js";
import { generateRoutes } from "./routes/generate.js";
import { healthRoutes } from "./routes/health.js";
import { infoRoutes } from "./routes/info.js";
import { metricsRoutes } from "./routes/metrics.js";
import { fieldHelp } from "./schemas.js";
import { zodValidatorCompiler } from "./validation.js";

/**
 * The agent's HTTP API (`itera-agent serve`, docs/serve.md): Fastify with zod-validated bodies, pino
 * logs on stderr, Prometheus metrics. The server listens at once and loads the model in the
 * background: /healthz answers 503 until the model is ready.
 */
export interface ServeOptions extends HttpPolicy {
  /** A loaded model (the caller keeps ownership), or a loader (the server disposes what it loads). */
  model: LanguageModel | (() => Promise<LanguageModel>);
  /** The model folder (its identity and card are read before the model is loaded). */
  modelDir: string;
  profile?: DeviceProfile | null;
  manifest?: BundleIndex | null;
  mode?: "bundle" | "dev";
  /** Intra-op threads the model was loaded with (reported by /v1/info). */
  threads?: number;
  /** Largest max_tokens a request may ask for (default 2048). */
  maxTokensLimit?: number;
  queue?: Partial<QueueLimits>;
  /** Default: JSON lines on stderr at level info. */
  logger?: Logger;
  /** Silence on a stream after which it sends a `: keep-alive` comment (default 15 s). */
  heartbeatMs?: number;
  /** When set, every request but GET /healthz needs `Authorization: Bearer <apiKey>`. */
  apiKey?: string;
  /** Largest request body in bytes (default 1 MiB). */
  bodyLimit?: number;
  /** Where generations and their feedback are kept (the agent's store); none: /v1/feedback is off. */
  feedback?: FeedbackStore;
}

export const DEFAULT_MAX_TOKENS_LIMIT = 2048;
export const DEFAULT_QUEUE: QueueLimits = { maxWaitMs: 30_000, maxWaiting: 8 };

export interface Server {
  app: FastifyInstance;
  engine: Engine;
  metrics: ServeMetrics;
  /** Settles when the model is loaded; rejects with the loader's error. */
  ready: Promise<void>;
  /** Listen (port 0: a free port); resolves with the base URL. */
  listen(host: string, port: number): Promise<string>;
  /** Cancel the generations in progress, stop listening, free the model if the server loaded it. */
  close(): Promise<void>;
}

export function stderrLogger(level = "info"): Logger {
  // A plain file-descriptor destination: pino's worker-thread transports do not survive bundling.
  return pino({ level }, pino.destination({ dest: 2, sync: true }));
}

export async function createServer(options: ServeOptions): Promise<Server> {
  const maxTokensLimit = options.maxTokensLimit ?? DEFAULT_MAX_TOKENS_LIMIT;
  const limits: QueueLimits = { ...DEFAULT_QUEUE, ...options.queue };
  const identity = await describeModel(options.modelDir);
  const queue = new TurnQueue(limits);
  const metrics = new ServeMetrics(() => ({ busy: queue.busy, waiting: queue.waiting }), {
    model: identity.id,
    quant: identity.quant,
    profile: options.profile?.name ?? "",
    agent_version: VERSION,
    onnxruntime: env.versions.node ?? env.versions.common ?? "",
  });
  const engine = new Engine(metrics, queue, maxTokensLimit);
  const ctx: ServeContext = {
    engine,
    metrics,
    model: identity,
    maxTokensLimit,
    queueLimits: limits,
    heartbeatMs: options.heartbeatMs ?? 15_000,
    options,
    active: new Set(),
    ...(options.feedback && { feedback: options.feedback }),
  };

  const app = Fastify({
    // Typed as Fastify's logger interface so that the routes take a plain FastifyInstance.
    loggerInstance: (options.logger ?? stderrLogger()) as FastifyBaseLogger,
    bodyLimit: options.bodyLimit ?? 1024 * 1024,
    requestIdHeader: "x-request-id",
  });
  // JSON only: a text/plain body is a 415 that says to send JSON, not a confusing type error.
  app.removeContentTypeParser("text/plain");
  app.setValidatorCompiler(zodValidatorCompiler({ ...fieldHelp(maxTokensLimit), ...feedbackFieldHelp }));
  // Before the route table and the key: CORS's own preflight route is not an endpoint to list.
  await registerHttpPolicy(app, options);
  const routes = new Map<string, string[]>();
  app.addHook("onRoute", (r) => {
    const methods = Array.isArray(r.method) ? r.method : [r.method];
    routes.set(r.url, [...(routes.get(r.url) ?? []), ...methods]);
  });
  app.addHook("onRequest", (request, reply, done) => {
    const t0 = performance.now();
    reply.header("x-request-id", request.id);
    reply.raw.once("close", () => {
      const status = reply.raw.writableFinished ? reply.raw.statusCode : 499;
      metrics.countRequest(
        request.method,
        request.routeOptions.url ?? "unmatched",
        status,
        (performance.now() - t0) / 1000,
      );
    });
    done();
  });
  if (options.apiKey !== undefined) requireApiKey(app, options.apiKey);
  installErrorHandlers(app, routes);
  for (const register of [
    healthRoutes,
    infoRoutes,
    generateRoutes,
    modelsRoutes,
    completionsRoutes,
    feedbackRoutes,
    metricsRoutes,
  ]) {
    register(app, ctx);
  }

  const owned = typeof options.model === "function";
  const ready = (async () => {
    try {
      const model = typeof options.model === "function" ? await options.model() : options.model;
      engine.setModel(model);
      app.log.info({ model: identity.id, load_ms: Math.round(engine.loadMs ?? 0) }, "model loaded");
    } catch (e) {
      engine.setFailed(e as Error);
      app.log.error({ err: e }, "the model failed to load");
      throw e;
    }
  })();
  // The caller awaits `ready`; this keeps an unobserved failure from crashing the process first.
  ready.catch(() => {});

  return {
    app,
    engine,
    metrics,
    ready,
    listen: (host, port) => app.listen({ host, port }),
    close: async () => {
      const stopping = unavailable("the server is stopping", 5, "retry when it is back (GET /healthz)");
      for (const c of ctx.active) c.abort(stopping);
      await app.close();
      await ready.catch(() => {});
      if (owned) await engine.loaded?.dispose();
    },
  };
}
