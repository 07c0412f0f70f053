import type { Command } from "commander";
import { IteraError } from "../errors.js";
import { loadProfile, parseProfile } from "../profile/load.js";
import type { DeviceProfile } from "../profile/schema.js";
import { type BundleIndex, PROFILE_ASSET } from "./bundle-index.js";
import { assetContent, bundleIndex, inBundle } from "./embedded.js";
import { extractBundle } from "./extract.js";
import { installedRelease } from "./release.js";

/**
 * What every `itera-agent` command runs with: the model folder, the device profile and (inside a
 * bundle) the embedded manifest. Agent commands (run, info, bench, agent, ...) call:
 *
 *   addModelOptions(cmd);                         // adds --model DIR --profile NAME (dev mode only)
 *   const ctx = await agentContext(opts);         // { mode, modelDir, profile, manifest }
 *
 * - Bundle mode (the single executable, `node:sea` isSea() true): the embedded assets are checked
 *   against bundle.json (the agent refuses to start on any mismatch), the native onnxruntime files
 *   are extracted once to a cache folder (src/agent-host/extract.ts), the model is the release's
 *   model pack beside the executable, checked against the release manifest (src/agent-host/release.ts),
 *   and --model/--profile are refused: a bundle runs the model pack and profile it was installed with.
 * - Dev mode (`node dist/cli/itera-agent.js` or tsx): --model DIR and --profile NAME|FILE are
 *   required; `manifest` is null.
 */
export interface AgentContext {
  mode: "bundle" | "dev";
  modelDir: string;
  profile: DeviceProfile;
  /** The release's manifest.json (checked against this runtime); null in dev mode. */
  manifest: BundleIndex | null;
  /** Bundle mode: where the files were extracted and whether this run did it (cold start). */
  extraction?: { dir: string; extracted: boolean };
}

export interface ModelOptions {
  model?: string;
  profile?: string;
}

export function addModelOptions(cmd: Command): Command {
  return cmd
    .option("--model <dir>", "model folder (dev mode only; a bundle embeds its model)")
    .option(
      "--profile <name>",
      "device profile name or .json path (dev mode only; a bundle embeds its profile)",
    );
}

export async function agentContext(opts: ModelOptions): Promise<AgentContext> {
  if (inBundle()) {
    if (opts.model !== undefined || opts.profile !== undefined) {
      throw new IteraError("--model and --profile are for development runs, not for a bundle", {
        where: process.execPath,
        fix: "drop --model/--profile: this executable runs the model and profile it was built with",
      });
    }
    bundleIndex();
    const { manifest, modelDir } = installedRelease();
    const profile = parseProfile(
      JSON.parse(assetContent(PROFILE_ASSET).toString("utf8")),
      `${process.execPath}:${PROFILE_ASSET}`,
    );
    const x = extractBundle();
    return {
      mode: "bundle",
      modelDir,
      profile,
      manifest,
      extraction: { dir: x.dir, extracted: x.extracted },
    };
  }
  if (opts.model === undefined || opts.profile === undefined) {
    throw new IteraError("outside a bundle, --model DIR and --profile NAME are required", {
      fix: "pass --model <model folder> --profile <device profile>, or run a bundle built by `itera build`",
    });
  }
  return { mode: "dev", modelDir: opts.model, profile: await loadProfile(opts.profile), manifest: null };
}
