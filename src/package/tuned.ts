import { cp, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { IteraError } from "../errors.js";
import { readTuned, TUNED_FILE, type Tuned } from "../tune/tuned-file.js";
import { buildQuantModes } from "./quantization.js";

/**
 * `itera build --tuned FILE`: the tuning travels in the bundle's model folder as `tuned.json`, where
 * the agent looks for it (src/tune/defaults.ts) after its state folder's. The file is checked before
 * any long work: it must be a valid tuned.json made for the build's profile.
 */
export async function readBuildTuned(path: string, profile: string): Promise<Tuned> {
  const tuned = await readTuned(path);
  if (tuned.profile !== profile) {
    throw new IteraError(`${path} was tuned for profile '${tuned.profile}', the build is for '${profile}'`, {
      where: "--tuned",
      fix: `pass a tuned.json made by \`itera tune <model> --profile ${profile}\`, or build with --profile ${tuned.profile}`,
    });
  }
  return tuned;
}

/** The --quant a tuning asks for: its pick's precision when it is one `itera build --quant` makes. */
export function tunedQuant(tuned: Tuned | undefined): string | undefined {
  const p = tuned?.pick.precision;
  return p !== undefined && (buildQuantModes as readonly string[]).includes(p) ? p : undefined;
}

/**
 * The folder to embed: `modelDir` with `tuned.json` added. A folder the build made (the quantizer's
 * output in `workDir`) gets the file; the user's own folder is copied into `workDir` first, never written.
 */
export async function withTuned(modelDir: string, tuned: Tuned, workDir: string): Promise<string> {
  let dir = modelDir;
  if (!modelDir.startsWith(join(workDir, "/"))) {
    dir = join(workDir, "model-tuned");
    await cp(modelDir, dir, { recursive: true, filter: (src) => !src.endsWith(`/${TUNED_FILE}`) });
  }
  await writeFile(join(dir, TUNED_FILE), `${JSON.stringify(tuned, null, 2)}\n`);
  return dir;
}
