import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import { mkdir, symlink } from "node:fs/promises";
import { join, resolve } from "node:path";
import { promisify } from "node:util";
import { fixtureModels, reference } from "./fixtures/runtime/models.js";
import { tempDir } from "./temp-dir.js";

/** Shared by the packaging suites: the model to bundle, and how to run a bundle like a device would. */
export const run = promisify(execFile);

/** The recurrent (Itera-Lite-style) fixture model and PyTorch's greedy continuation of its prompt. */
export function fixtureModel(): { dir: string; prompt: string; greedyIds: number[] } {
  const dir = join(fixtureModels(), "recurrent");
  const ref = reference(dir);
  return { dir, prompt: ref.prompt, greedyIds: ref.first.greedy_ids };
}

/** A committed house model (models/<id>) with its PyTorch reference (golden.json). */
export function houseModel(id: string): {
  dir: string;
  prompt: string;
  inputIds: number[];
  greedyIds: number[];
} {
  const dir = resolve("models", id);
  const golden = JSON.parse(readFileSync(join(dir, "golden.json"), "utf8")) as {
    prompt: string;
    input_ids: number[];
    greedy_ids: number[];
  };
  return { dir, prompt: golden.prompt, inputIds: golden.input_ids, greedyIds: golden.greedy_ids };
}

/**
 * An environment with no Node.js anywhere on PATH (only a few shell tools), a private HOME and a
 * private agent cache: what a fresh device looks like.
 */
export async function deviceEnv(): Promise<{ env: NodeJS.ProcessEnv; home: string; cache: string }> {
  const home = await tempDir("itera-device-");
  const bin = join(home, "bin");
  await mkdir(bin);
  for (const tool of ["sh", "cat", "grep", "uname", "lscpu"]) {
    await symlink(`/usr/bin/${tool}`, join(bin, tool)).catch(() => undefined);
  }
  const cache = join(home, "agent-cache");
  return { env: { PATH: bin, HOME: home, ITERA_AGENT_CACHE: cache, LANG: "C" }, home, cache };
}

export const qemuRunner = join(import.meta.dirname, "..", "tools", "qemu", "run-arm64.sh");
