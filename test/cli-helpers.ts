import { Command } from "commander";
import { vi } from "vitest";

export interface CliResult {
  stdout: string;
  stderr: string;
  /** process.exitCode the command left (0 when it set none). */
  code: number;
}

/**
 * A runner for CLI commands in-process through commander, as a user types them (`"node", "itera", ...args`),
 * with stdout and stderr captured and the exit code read back. `register` adds the commands under test to
 * a fresh program on every run. `captureConsoleLog` also collects console.log lines into stdout: vitest
 * routes console output to its reporter, not through process.stdout.write.
 */
export function inProcessCli(
  register: (program: Command) => void,
  { captureConsoleLog = false }: { captureConsoleLog?: boolean } = {},
): (...args: string[]) => Promise<CliResult> {
  return async (...args) => {
    const program = new Command().exitOverride();
    register(program);
    let stdout = "";
    let stderr = "";
    const spies: { mockRestore(): void }[] = [
      vi.spyOn(process.stdout, "write").mockImplementation((chunk) => {
        stdout += String(chunk);
        return true;
      }),
      vi.spyOn(process.stderr, "write").mockImplementation((chunk) => {
        stderr += String(chunk);
        return true;
      }),
    ];
    if (captureConsoleLog) {
      spies.push(
        vi.spyOn(console, "log").mockImplementation((...a: unknown[]) => {
          stdout += `${a.join(" ")}\n`;
        }),
      );
    }
    process.exitCode = 0;
    try {
      await program.parseAsync(["node", "itera", ...args]);
    } finally {
      for (const spy of spies) spy.mockRestore();
    }
    const code = Number(process.exitCode ?? 0);
    process.exitCode = 0;
    return { stdout, stderr, code };
  };
}
