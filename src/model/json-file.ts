import { readFile } from "node:fs/promises";
import { basename } from "node:path";
import type { z } from "zod";
import { IteraError } from "../errors.js";

/** Turn a zod failure into "field a.b.c: reason" lines for the user. */
export function describeIssues(error: z.ZodError): string {
  return error.issues
    .map((i) => `${i.path.length ? i.path.join(".") : "(root)"}: ${i.message}`)
    .slice(0, 5)
    .join("; ");
}

/**
 * Read a JSON file of a model folder and validate it; every failure is one IteraError naming the
 * file and, for schema failures, the field. Returns undefined for a missing file when `optional`.
 */
export async function readModelJson<S extends z.ZodType>(
  path: string,
  schema: S,
  opts: { optional: true; fix: string; missingFix?: string },
): Promise<z.infer<S> | undefined>;
export async function readModelJson<S extends z.ZodType>(
  path: string,
  schema: S,
  opts: { optional?: false; fix: string; missingFix?: string },
): Promise<z.infer<S>>;
export async function readModelJson<S extends z.ZodType>(
  path: string,
  schema: S,
  opts: { optional?: boolean; fix: string; missingFix?: string },
): Promise<z.infer<S> | undefined> {
  const name = basename(path);
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "ENOENT" && opts.optional) return undefined;
    throw new IteraError(`cannot read ${name} (${code ?? (e as Error).message})`, {
      where: path,
      fix: opts.missingFix ?? opts.fix,
      cause: e,
    });
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new IteraError(`${name} is not valid JSON: ${(e as Error).message}`, {
      where: path,
      fix: "repair the JSON syntax",
    });
  }
  const parsed = schema.safeParse(json);
  if (!parsed.success) {
    throw new IteraError(`invalid ${name}: ${describeIssues(parsed.error)}`, { where: path, fix: opts.fix });
  }
  return parsed.data;
}
