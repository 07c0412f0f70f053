import { stat } from "node:fs/promises";
import type { Command } from "commander";
import { readTrustedKeyFile, verifyBundle, verifyBundleArchive } from "../../package/verify.js";
import { action, printJson } from "../run.js";

export function registerVerify(program: Command): void {
  program
    .command("verify <bundle>")
    .description(
      "check a bundle folder (or its .tar.gz): every file's sha256 and the Ed25519 signature of its manifest",
    )
    .option("--key <pub>", "trusted public key file (itera keygen's .pub): the bundle must be signed by it")
    .option("--json", "machine-readable output")
    .action(
      action(async (bundle: string, opts: { key?: string; json?: boolean }) => {
        const key = opts.key !== undefined ? await readTrustedKeyFile(opts.key) : undefined;
        const isArchive =
          /\.(tar\.gz|tgz)$/.test(bundle) && (await stat(bundle).catch(() => null))?.isFile() === true;
        const r = isArchive ? await verifyBundleArchive(bundle, key) : await verifyBundle(bundle, key);
        if (opts.json) printJson(r);
        else {
          const signer =
            r.signature !== "valid" ? "" : r.trusted_key ? ", by the trusted key" : ", signer not pinned";
          console.log(`${r.ok ? "OK" : "FAILED"} ${r.bundle_id} (signature: ${r.signature}${signer})`);
          if (r.parts) {
            const { runtime, model_pack: pack } = r.parts;
            console.log(
              `  runtime ${runtime.id}${runtime.ok ? "" : " (FAILED)"}; model pack ${pack.id} ${pack.quant} (signature: ${pack.signature})${pack.ok ? "" : " FAILED"}`,
            );
          }
          for (const p of r.problems) console.log(`  ${p}`);
        }
        if (!r.ok) process.exitCode = 3;
      }),
    );
}
