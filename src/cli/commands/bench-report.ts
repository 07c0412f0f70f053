import { readFile } from "node:fs/promises";
import { basename, extname } from "node:path";
import type { Command } from "commander";
import { type BenchResult, benchResultSchema } from "../../bench/result.js";
import { IteraError } from "../../errors.js";
import { type BenchRun, renderBenchHtml } from "../../report/bench-page.js";
import { isIteraPage } from "../../report/html.js";
import { writeFileAtomic } from "../../util/fs.js";
import { checkOutputFile } from "../../util/output.js";
import { VERSION } from "../../version.js";
import { action } from "../run.js";

/** The results of a `--save` file (json array or jsonl); md and csv lose fields, so they are refused. */
export async function readSavedRun(file: string): Promise<BenchResult[]> {
  const text = await readFile(file, "utf8").catch((e: NodeJS.ErrnoException) => {
    throw new IteraError(`cannot read ${file}: ${e.code ?? e.message}`, {
      where: file,
      fix: "give a file written by `itera bench --save FILE -o json` (or jsonl)",
    });
  });
  let values: unknown[];
  try {
    const v: unknown = JSON.parse(text);
    values = Array.isArray(v) ? v : [v];
  } catch {
    try {
      values = text
        .split("\n")
        .filter((l) => l.trim() !== "")
        .map((l) => JSON.parse(l) as unknown);
    } catch {
      throw new IteraError(`${file} is not a benchmark saved as json or jsonl`, {
        where: file,
        fix: "save runs with `itera bench ... -o json --save FILE` (md and csv tables lose fields)",
      });
    }
  }
  if (values.length === 0) {
    throw new IteraError(`${file} holds no benchmark results`, {
      where: file,
      fix: "give a non-empty --save file",
    });
  }
  return values.map((v, i) => {
    const r = benchResultSchema.safeParse(v);
    if (!r.success) {
      const issue = r.error.issues[0];
      throw new IteraError(
        `${file}: result ${i + 1} is not a benchmark result (${issue?.path.join(".") || "value"}: ${issue?.message})`,
        { where: file, fix: "give files written by `itera bench -o json --save FILE`" },
      );
    }
    return r.data;
  });
}

/** `itera bench-report FILE... --html OUT`: saved runs compared in one self-contained HTML page. */
export function registerBenchReport(program: Command): void {
  program
    .command("bench-report")
    .description(
      "compare saved benchmark runs (itera bench -o json --save) in one self-contained HTML report",
    )
    .argument("<files...>", "benchmark results saved as json or jsonl")
    .requiredOption("--html <file>", "the HTML report to write")
    .option("--title <text>", "the report's title (default: the models and machines)")
    .action(
      action(async (files: string[], opts: { html: string; title?: string }) => {
        const out = await checkOutputFile(opts.html, {
          command: "bench-report",
          option: "--html",
          inputs: files,
          owned: async (f) => isIteraPage(await readFile(f, "utf8")),
        });
        const names = files.map((f) => basename(f, extname(f)));
        // Two files of the same name are told apart by their paths.
        const runs: BenchRun[] = [];
        for (const [i, f] of files.entries()) {
          const label = names.filter((n) => n === names[i]).length > 1 ? f : names[i]!;
          runs.push({ label, results: await readSavedRun(f) });
        }
        await writeFileAtomic(
          out,
          renderBenchHtml(runs, {
            version: VERSION,
            generated: new Date(),
            ...(opts.title ? { title: opts.title } : {}),
          }),
        );
        process.stderr.write(`wrote ${out} (${runs.length} run(s))\n`);
      }),
    );
}
