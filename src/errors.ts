/**
 * The one error type a user can cause (DESIGN.md §9): what failed, where, and how to fix it.
 * The CLI prints it as three short lines and exits non-zero; anything else is a bug and prints a stack.
 */
export class IteraError extends Error {
  readonly where: string | undefined;
  readonly fix: string | undefined;
  readonly exitCode: number;

  constructor(what: string, opts: { where?: string; fix?: string; exitCode?: number; cause?: unknown } = {}) {
    super(what, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = "IteraError";
    this.where = opts.where;
    this.fix = opts.fix;
    this.exitCode = opts.exitCode ?? 1;
  }

  /** The message as the CLI shows it. */
  format(): string {
    const lines = [`error: ${this.message}`];
    if (this.where) lines.push(`  where: ${this.where}`);
    if (this.fix) lines.push(`  fix:   ${this.fix}`);
    return lines.join("\n");
  }

  toJSON(): { error: string; where?: string; fix?: string } {
    return {
      error: this.message,
      ...(this.where ? { where: this.where } : {}),
      ...(this.fix ? { fix: this.fix } : {}),
    };
  }
}

export function isIteraError(e: unknown): e is IteraError {
  return e instanceof IteraError;
}
