import { Counter, collectDefaultMetrics, exponentialBuckets, Gauge, Histogram, Registry } from "prom-client";

/**
 * The server's Prometheus metrics (prom-client), in a registry of its own so that several servers
 * in one process (tests) keep separate counts. Names follow Prometheus conventions: base units
 * (seconds), `_total` for counters, the `itera_` prefix; process_* and nodejs_* are prom-client's
 * default collectors (CPU, resident memory, heap, event-loop lag, GC).
 */
export type GenerationOutcome = "eos" | "stop" | "max_tokens" | "context" | "cancelled" | "error";

export interface GenerationFigures {
  endpoint: string;
  outcome: GenerationOutcome;
  promptTokens: number;
  generatedTokens: number;
  /** Absent when no token came (cancelled or failed during prefill). */
  ttftMs?: number;
  totalMs: number;
  /** Decode tokens/s; absent when fewer than two tokens were generated. */
  tokensPerS?: number;
}

export class ServeMetrics {
  readonly registry = new Registry();
  private readonly httpRequests: Counter<"method" | "route" | "status_code">;
  private readonly httpDuration: Histogram<"method" | "route" | "status_code">;
  private readonly generations: Counter<"endpoint" | "outcome">;
  private readonly promptTokens: Counter;
  private readonly generatedTokens: Counter;
  private readonly generationSeconds: Histogram;
  private readonly ttftSeconds: Histogram;
  private readonly queueWaitSeconds: Histogram;
  private readonly lastTokensPerS: Gauge;
  private readonly queueRejected: Counter<"reason">;

  constructor(queueState: () => { busy: boolean; waiting: number }, modelInfo: Record<string, string>) {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry });
    this.httpRequests = new Counter({
      name: "itera_http_requests_total",
      help: "HTTP requests answered, by route pattern and status code (499: the client closed the connection first)",
      labelNames: ["method", "route", "status_code"],
      registers,
    });
    this.httpDuration = new Histogram({
      name: "itera_http_request_duration_seconds",
      help: "Time from request to the end of the response (streams included)",
      labelNames: ["method", "route", "status_code"],
      buckets: exponentialBuckets(0.001, 4, 10),
      registers,
    });
    this.generations = new Counter({
      name: "itera_generations_total",
      help: "Generations by endpoint and outcome (the stop reason, cancelled or error)",
      labelNames: ["endpoint", "outcome"],
      registers,
    });
    this.promptTokens = new Counter({
      name: "itera_prompt_tokens_total",
      help: "Prompt tokens fed to the model",
      registers,
    });
    this.generatedTokens = new Counter({
      name: "itera_generated_tokens_total",
      help: "Tokens generated (cancelled generations included)",
      registers,
    });
    this.generationSeconds = new Histogram({
      name: "itera_generation_duration_seconds",
      help: "Generation time from the start of the turn (prefill included, queue wait excluded) to the last token",
      buckets: exponentialBuckets(0.01, 2, 14),
      registers,
    });
    this.ttftSeconds = new Histogram({
      name: "itera_time_to_first_token_seconds",
      help: "Time from the start of the turn to the first generated token (prefill included, queue wait excluded)",
      buckets: exponentialBuckets(0.001, 2, 16),
      registers,
    });
    this.queueWaitSeconds = new Histogram({
      name: "itera_queue_wait_seconds",
      help: "Time a generation request waited for the model",
      buckets: exponentialBuckets(0.001, 4, 10),
      registers,
    });
    this.lastTokensPerS = new Gauge({
      name: "itera_tokens_per_second",
      help: "Decode tokens/s of the last generation with at least two tokens",
      registers,
    });
    this.queueRejected = new Counter({
      name: "itera_queue_rejected_total",
      help: "Generation requests answered 503 because the queue was full or they waited too long",
      labelNames: ["reason"],
      registers,
    });
    new Gauge({
      name: "itera_queue_waiting",
      help: "Generation requests waiting for the model",
      registers,
      collect() {
        this.set(queueState().waiting);
      },
    });
    new Gauge({
      name: "itera_generation_in_progress",
      help: "1 while the model is generating",
      registers,
      collect() {
        this.set(queueState().busy ? 1 : 0);
      },
    });
    new Gauge({
      name: "itera_model_info",
      help: "The model and agent this server runs (always 1; the facts are in the labels)",
      labelNames: Object.keys(modelInfo),
      registers,
    }).set(modelInfo, 1);
  }

  countRequest(method: string, route: string, statusCode: number, seconds: number): void {
    const labels = { method, route, status_code: String(statusCode) };
    this.httpRequests.inc(labels);
    this.httpDuration.observe(labels, seconds);
  }

  countRejected(reason: "full" | "timeout"): void {
    this.queueRejected.inc({ reason });
  }

  observeQueueWait(ms: number): void {
    this.queueWaitSeconds.observe(ms / 1000);
  }

  observeGeneration(g: GenerationFigures): void {
    this.generations.inc({ endpoint: g.endpoint, outcome: g.outcome });
    this.promptTokens.inc(g.promptTokens);
    this.generatedTokens.inc(g.generatedTokens);
    if (g.outcome === "error" || g.outcome === "cancelled") return;
    this.generationSeconds.observe(g.totalMs / 1000);
    if (g.ttftMs !== undefined) this.ttftSeconds.observe(g.ttftMs / 1000);
    if (g.tokensPerS !== undefined) this.lastTokensPerS.set(g.tokensPerS);
  }

  async exposition(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }
}
