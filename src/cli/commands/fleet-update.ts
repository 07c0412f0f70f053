import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { Command } from "commander";
import { defaultFleetDb, FleetStore } from "../../fleet/store.js";
import { parseCanary, renderUpdateMarkdown, runFleetUpdate, type UpdateEvent } from "../../fleet/update.js";
import { readTrustedKeyFile } from "../../package/verify.js";
import {
  addBrokerOptions,
  type BrokerCliOptions,
  brokerOptions,
  checkId,
  positive,
} from "../../protocol/options.js";
import { checkOutputDir, writeDirAtomic } from "../../util/output.js";
import { IteraError } from "../../errors.js";
import { parseSplit } from "../../fleet/variants.js";
import { action, collect, printJson } from "../run.js";
import { parseSelect } from "../../fleet/bench.js";

interface UpdateCliOptions extends BrokerCliOptions {
  fleet: string;
  bundle?: string;
  modelPack?: string;
  trustedKey?: string;
  select?: string[];
  canary: string;
  maxFailures: string;
  healthTimeout: string;
  timeout: string;
  discover?: string;
  variant?: string;
  split?: string;
  offlineWait: string;
  out?: string;
  db?: string;
  json?: boolean;
}

/** Exit status when the update did not reach every selected device (canary failed, or stopped). */
export const UPDATE_FAILED_EXIT = 4;

/** `itera fleet update`: a whole bundle over MQTT, canary first, health-checked, rolled back by the device. */
export function registerFleetUpdate(fleet: Command): void {
  addBrokerOptions(
    fleet
      .command("update")
      .description(
        "over-the-air update of a fleet with a bundle (or its model pack alone): canary first, health check, automatic rollback",
      )
      .requiredOption("--fleet <name>", "fleet name (topic level itera/v1/<fleet>/...)")
      .option("--bundle <dir>", "bundle folder (or .tar.gz) made by `itera build`: every file is sent")
      .option(
        "--model-pack <dir>",
        "a v2 bundle folder (or .tar.gz) built with `itera build --runtime`: only its model pack and release files are sent; each device takes the runtime from its current release (and refuses when it runs another)",
      )
      .option("--trusted-key <pub>", "check here that the bundle is signed by this Ed25519 public key (.pub)")
      .option(
        "--select <key=value>",
        "only devices whose birth matches (profile, arch, platform, model, device)",
        collect,
      )
      .option("--canary <n|p%>", "devices updated first; the rest only when they are healthy", "1")
      .option("--max-failures <n>", "stop sending to further devices after this many failed", "1")
      .option("--health-timeout <s>", "how long a device's new release has to come back online", "60")
      .option("--timeout <s>", "deadline of each wave (transfer, install, restart, health), seconds", "600")
      .option("--discover <s>", "how long to wait for devices to announce themselves, seconds")
      .option(
        "--variant <name>",
        "install the bundle as this A/B variant (announced by the devices, reported per variant)",
      )
      .option(
        "--split <p%>",
        "with --variant: the share of the selected devices that gets it (the same ones on every run)",
      )
      .option(
        "--offline-wait <s>",
        "after the last wave, how long devices that were offline have to come back and update",
        "60",
      )
      .option("--out <dir>", "write report.md and report.json here")
      .option("--db <path>", `fleet history database (default ${defaultFleetDb()})`)
      .option("--json", "print the whole outcome as JSON"),
  ).action(
    action(async (opts: UpdateCliOptions) => {
      const fleetName = checkId(opts.fleet, "--fleet");
      if ((opts.bundle === undefined) === (opts.modelPack === undefined)) {
        throw new IteraError(
          opts.bundle === undefined ? "no bundle to send" : "--bundle and --model-pack both given",
          {
            where: "itera fleet update",
            fix: "give one of --bundle DIR (the whole bundle) or --model-pack DIR (a bundle built with `itera build --runtime`, sent without its runtime)",
          },
        );
      }
      const bundle = (opts.bundle ?? opts.modelPack)!;
      const canary = parseCanary(opts.canary);
      const maxFailures = positive(opts.maxFailures, "--max-failures", true);
      const healthTimeoutS = positive(opts.healthTimeout, "--health-timeout");
      const timeoutS = positive(opts.timeout, "--timeout");
      const discoverS = opts.discover ? positive(opts.discover, "--discover") : undefined;
      const offlineWaitS = positive(opts.offlineWait, "--offline-wait");
      const variant = opts.variant === undefined ? undefined : checkId(opts.variant, "--variant");
      if (opts.split !== undefined && variant === undefined) {
        throw new IteraError("--split needs --variant", {
          where: "--split",
          fix: "name the variant the split devices get with --variant NAME (e.g. --variant int4 --split 50%)",
        });
      }
      const splitPercent = opts.split === undefined ? undefined : parseSplit(opts.split);
      const select = parseSelect(opts.select);
      const broker = brokerOptions(opts);
      const trustedKey = opts.trustedKey ? await readTrustedKeyFile(opts.trustedKey) : undefined;
      const out = opts.out
        ? await checkOutputDir(opts.out, {
            command: "itera fleet",
            option: "--out",
            inputs: [opts.db ?? defaultFleetDb(), bundle],
          })
        : undefined;
      const store = new FleetStore(opts.db ?? defaultFleetDb());
      const say = (line: string) => process.stderr.write(`${line}\n`);
      const onEvent = (e: UpdateEvent) => {
        if (e.type === "discovered")
          say(
            `update: ${e.devices.length} devices, canary ${e.canary.join(", ")}${e.kept.length > 0 ? `; not in the split (keep what they run): ${e.kept.join(", ")}` : ""}`,
          );
        else if (e.type === "deferred")
          say(`update: offline, sent after the last wave: ${e.devices.join(", ")}`);
        else if (e.type === "waiting")
          say(`update: waiting up to ${e.seconds} s for devices that were offline: ${e.devices.join(", ")}`);
        else if (e.type === "wave")
          say(`update: ${e.wave === 0 ? "canary" : `wave ${e.wave}`}: ${e.devices.join(", ")}`);
        else if (e.type === "status") say(`${e.device}: ${e.status}${e.details ? ` ${e.details}` : ""}`);
        else if (e.type === "done") say(`${e.device}: ${e.status}`);
        else if (e.type === "sent" && e.resend) say(`${e.device} came back: job sent again`);
        else if (e.type === "chunks") say(`${e.device}: sending ${e.count} chunks`);
        else if (e.type === "refused") say(`refused a message on ${e.topic}: ${e.reason}`);
        else if (e.type === "warning") say(`\nWARNING: ${e.message}\n`);
      };
      try {
        const outcome = await runFleetUpdate({
          broker,
          fleet: fleetName,
          bundle,
          ...(opts.modelPack !== undefined ? { payload: "model-pack" as const } : {}),
          ...(trustedKey ? { trustedKey } : {}),
          ...(select ? { select } : {}),
          canary,
          maxFailures,
          healthTimeoutS,
          timeoutS,
          ...(discoverS ? { discoverS } : {}),
          ...(variant ? { variant } : {}),
          ...(splitPercent ? { splitPercent } : {}),
          offlineWaitS,
          store,
          onEvent,
        });
        const files: string[] = [];
        if (out) {
          await writeDirAtomic(out, async (tmp) => {
            await writeFile(join(tmp, "report.md"), renderUpdateMarkdown(outcome));
            await writeFile(join(tmp, "report.json"), `${JSON.stringify(outcome, null, 2)}\n`);
          });
          files.push(join(out.dir, "report.md"), join(out.dir, "report.json"));
        }
        if (opts.json) printJson({ ...outcome, files });
        else {
          process.stdout.write(renderUpdateMarkdown(outcome));
          if (files.length > 0) process.stdout.write(`\nwritten: ${files.join(", ")}\n`);
        }
        if (outcome.result !== "updated") process.exitCode = UPDATE_FAILED_EXIT;
      } finally {
        store.close();
      }
    }),
  );
}
