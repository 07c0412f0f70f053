import type { DecodePath } from "../bench/engine.js";
import { IteraError } from "../errors.js";
import { profileLowest } from "../package/quantization.js";
import type { DeviceProfile } from "../profile/schema.js";
import { checkThreads, hostCores } from "../profile/threads.js";
import { decodePaths } from "./tuned-file.js";

/**
 * What `itera tune` measures: thread counts 1..min(host cores, profile cores) (more threads than cores
 * only compete for them: src/profile/threads.ts), and the precisions the profile allows for the model
 * folder: its own, and for a float folder every precision down to the profile's lowest, as
 * `itera build` would quantize it (src/package/quantization.ts). `--threads`/`--precisions` narrow it.
 */
const FLOAT = new Set(["fp32", "fp16", "bf16"]);

export function threadCandidates(profile: DeviceProfile, given: string | undefined): number[] {
  if (given !== undefined) {
    const list = given.split(",").map((t) => {
      const n = Number(t.trim());
      return checkThreads(
        n,
        "--threads",
        "give thread counts from 1 to this host's cores, e.g. --threads 1,2",
      );
    });
    return [...new Set(list)].sort((a, b) => a - b);
  }
  const top = Math.min(hostCores(), profile.cores);
  return Array.from({ length: top }, (_, i) => i + 1);
}

/** The precisions allowed for a folder of precision `own` under `profile`, own first. */
export function allowedPrecisions(own: string, profile: DeviceProfile): string[] {
  if (!FLOAT.has(own)) return [own];
  const lowest = profileLowest(profile);
  if (lowest === undefined) return [own];
  return lowest === "int8" ? [own, "int8"] : [own, "int8", "int4"];
}

export function precisionCandidates(
  own: string,
  profile: DeviceProfile,
  given: string | undefined,
  ownOnly = false,
): string[] {
  const allowed = ownOnly ? [own] : allowedPrecisions(own, profile);
  if (given === undefined) return allowed;
  return listOption(
    given,
    "--precisions",
    allowed,
    `a precision profile '${profile.name}' allows for this ${own} model folder`,
  );
}

/** `--decode fused,step`: the tg decode paths to measure. */
export function decodeCandidates(given: string): DecodePath[] {
  return listOption(given, "--decode", decodePaths, "a decode path");
}

/** A comma-separated list of some of `allowed`, without repeats; anything else is refused, naming them. */
function listOption<T extends string>(given: string, flag: string, allowed: readonly T[], what: string): T[] {
  const list = [
    ...new Set(
      given
        .split(",")
        .map((x) => x.trim())
        .filter(Boolean),
    ),
  ];
  const bad = list.find((x) => !(allowed as readonly string[]).includes(x));
  if (bad !== undefined || list.length === 0) {
    throw new IteraError(`${flag} ${bad ?? "(empty)"}: not ${what}`, {
      where: flag,
      fix: `give some of: ${allowed.join(", ")}`,
    });
  }
  return list as T[];
}
