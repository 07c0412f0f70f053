/** A flash is a list of named steps; each is reported as it runs (stderr) and in the --json summary. */
export interface StepRecord {
  id: string;
  title: string;
  status: "done" | "failed" | "skipped" | "planned";
  ms?: number;
  detail?: string;
}

export class StepLog {
  readonly steps: StepRecord[] = [];
  constructor(readonly say: (line: string) => void) {}

  /** Run one step; a thrown error marks it failed and propagates. */
  async run<T>(
    id: string,
    title: string,
    fn: () => Promise<T>,
    detail?: (r: T) => string | undefined,
  ): Promise<T> {
    const start = Date.now();
    this.say(`[${id}] ${title}`);
    try {
      const r = await fn();
      const d = detail?.(r);
      this.steps.push({ id, title, status: "done", ms: Date.now() - start, ...(d ? { detail: d } : {}) });
      if (d) this.say(`[${id}] ${d}`);
      return r;
    } catch (e) {
      this.steps.push({ id, title, status: "failed", ms: Date.now() - start, detail: (e as Error).message });
      throw e;
    }
  }

  skip(id: string, title: string, why: string): void {
    this.steps.push({ id, title, status: "skipped", detail: why });
    this.say(`[${id}] skipped: ${why}`);
  }

  plan(id: string, title: string, detail: string): void {
    this.steps.push({ id, title, status: "planned", detail });
    this.say(`[${id}] ${title}\n    ${detail}`);
  }
}
