import { performance } from "node:perf_hooks";

/**
 * One generation at a time on the model, first come first served. A request that would wait longer
 * than `maxWaitMs` (0: not at all), or that finds `maxWaiting` requests already waiting, is refused
 * with a hint of when to retry; a request whose client leaves while waiting gives up its place.
 */
export class QueueRejected extends Error {
  constructor(
    readonly reason: "full" | "timeout",
    /** Seconds until a turn is likely free (for Retry-After). */
    readonly retryAfterS: number,
  ) {
    super(
      reason === "full" ? "too many requests are waiting for the model" : "waited too long for the model",
    );
    this.name = "QueueRejected";
  }
}

/** The client went away before or during its turn. */
export class Cancelled extends Error {
  constructor() {
    super("the request was cancelled");
    this.name = "Cancelled";
  }
}

/** Why a request's signal aborted: its reason when it is an error (the server stopping), else Cancelled. */
export function abortError(signal: AbortSignal): Error {
  return signal.reason instanceof Error && signal.reason.name !== "AbortError"
    ? signal.reason
    : new Cancelled();
}

interface Waiter {
  start(): void;
}

export interface QueueLimits {
  maxWaitMs: number;
  maxWaiting: number;
}

export class TurnQueue {
  private running = false;
  private readonly waiters: Waiter[] = [];
  /** Durations of the last turns, for the Retry-After estimate. */
  private readonly recentMs: number[] = [];

  constructor(readonly limits: QueueLimits) {}

  get busy(): boolean {
    return this.running;
  }

  get waiting(): number {
    return this.waiters.length;
  }

  /** Seconds until `ahead` more turns are likely done (mean of recent turns; 1 s without history). */
  private estimateS(ahead: number): number {
    if (this.recentMs.length === 0) return 1;
    const mean = this.recentMs.reduce((a, b) => a + b, 0) / this.recentMs.length;
    return (mean * ahead) / 1000;
  }

  /** Wait for the turn, run `fn`, hand the turn on. Resolves with fn's value and the time waited. */
  async run<T>(fn: () => Promise<T>, signal: AbortSignal): Promise<{ value: T; waitedMs: number }> {
    if (signal.aborted) throw abortError(signal);
    const t0 = performance.now();
    if (this.running) await this.waitForTurn(signal);
    else this.running = true;
    const waitedMs = performance.now() - t0;
    const started = performance.now();
    try {
      return { value: await fn(), waitedMs };
    } finally {
      this.recentMs.push(performance.now() - started);
      if (this.recentMs.length > 8) this.recentMs.shift();
      const next = this.waiters.shift();
      // The turn passes straight to the next waiter: `running` stays true.
      if (next) next.start();
      else this.running = false;
    }
  }

  private waitForTurn(signal: AbortSignal): Promise<void> {
    const { maxWaitMs, maxWaiting } = this.limits;
    if (maxWaitMs <= 0) throw new QueueRejected("timeout", this.estimateS(1));
    if (this.waiters.length >= maxWaiting) {
      throw new QueueRejected("full", this.estimateS(this.waiters.length + 1));
    }
    return new Promise<void>((resolve, reject) => {
      const leave = () => {
        clearTimeout(timer);
        signal.removeEventListener("abort", onAbort);
        const i = this.waiters.indexOf(waiter);
        if (i >= 0) this.waiters.splice(i, 1);
      };
      const waiter: Waiter = {
        start: () => {
          leave();
          resolve();
        },
      };
      const onAbort = () => {
        leave();
        reject(abortError(signal));
      };
      const timer = setTimeout(() => {
        const ahead = this.waiters.indexOf(waiter) + 1;
        leave();
        reject(new QueueRejected("timeout", this.estimateS(ahead)));
      }, maxWaitMs);
      signal.addEventListener("abort", onAbort, { once: true });
      this.waiters.push(waiter);
    });
  }
}
