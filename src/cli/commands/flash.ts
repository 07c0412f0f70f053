import type { Command } from "commander";
import { IteraError } from "../../errors.js";
import { agentConfigFromOptions } from "../../deploy/agent-config.js";
import { readTrustedKey } from "../../deploy/bundle.js";
import { flashOverSsh } from "../../deploy/flash-ssh.js";
import { findDevice, upsertDevice } from "../../deploy/inventory.js";
import { checkPrefix } from "../../deploy/layout.js";
import { copySummary, type FlashReport } from "../../deploy/report.js";
import { flashRootfs } from "../../deploy/rootfs.js";
import { checkDestination, type SshTarget } from "../../deploy/ssh.js";
import { type Progress, progress } from "../../util/progress.js";
import { action, printJson } from "../run.js";

interface FlashOpts {
  ssh?: string;
  device?: string;
  rootfs?: string;
  port?: string;
  identity?: string;
  knownHosts?: string;
  acceptNewHostKey?: boolean;
  sudo?: boolean;
  prefix: string;
  key?: string;
  serviceManager: string;
  systemctl: string;
  healthTimeout: string;
  healthSettle: string;
  keep: string;
  fleet?: string;
  broker?: string;
  deviceId?: string;
  name?: string;
  inventory: boolean;
  dryRun?: boolean;
  json?: boolean;
}

function intOption(value: string, flag: string, min: number, max: number): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < min || n > max) {
    throw new IteraError(`invalid ${flag} '${value}'`, { fix: `give a whole number from ${min} to ${max}` });
  }
  return n;
}

/** Copy progress on stderr, one bar per run of the copy. */
function copyProgress(): (sent: number, total: number) => void {
  let bar: Progress | undefined;
  let barTotal = -1;
  return (sent, total) => {
    if (total !== barTotal) {
      bar = progress("copy (bytes)", total);
      barTotal = total;
    }
    if (sent >= total) bar?.done();
    else bar?.update(sent);
  };
}

export function registerFlash(program: Command): void {
  program
    .command("flash")
    .description(
      "install a bundle on a device over ssh (atomic switch, health check, rollback) or onto a mounted SD card",
    )
    .argument(
      "<bundle>",
      "bundle folder (firmware-bundles/<model>-<version>-<profile>/) or its .tar.gz with the folder beside it",
    )
    .option("--ssh <user@host>", "flash a running device over ssh")
    .option("--device <name>", "flash a device from the inventory (`itera devices`)")
    .option("--rootfs <path>", "install offline into a mounted SD-card root file system")
    .option("--port <n>", "ssh port")
    .option("--identity <file>", "ssh private key")
    .option(
      "--known-hosts <file>",
      "known_hosts file to check the device's host key against (default: ssh's own)",
    )
    .option(
      "--accept-new-host-key",
      "first contact: record an unknown host key (a CHANGED key is always refused)",
    )
    .option("--sudo", "run the device-side steps through `sudo -n` (non-root login with passwordless sudo)")
    .option("--prefix <path>", "the device's root for the install (a test root instead of /)", "/")
    .option("--key <pub>", "trusted public key: the bundle must be signed by it")
    .option(
      "--service-manager <name>",
      "systemd (systemctl daemon-reload/enable/restart) or none (unit link only)",
      "systemd",
    )
    .option("--systemctl <cmd>", "the systemctl command on the device", "systemctl")
    .option("--health-timeout <s>", "seconds to wait for the agent to become healthy", "60")
    .option("--health-settle <s>", "with systemd: seconds the unit must stay active", "3")
    .option("--keep <n>", "releases to keep on the device (current and previous always stay)", "3")
    .option("--fleet <name>", "write the fleet into etc/itera/agent.json")
    .option("--broker <url>", "write the MQTT broker URL into etc/itera/agent.json")
    .option("--device-id <id>", "write the device id into etc/itera/agent.json")
    .option("--name <name>", "name in the device inventory (default: device id, else host)")
    .option("--no-inventory", "do not record the flash in the device inventory")
    .option("--dry-run", "check the bundle and print every step without touching the device")
    .option("--json", "print a JSON summary on stdout")
    .action(
      action(async (bundle: string, o: FlashOpts) => {
        const modes = [o.ssh, o.device, o.rootfs].filter((x) => x !== undefined).length;
        if (modes !== 1) {
          throw new IteraError("give exactly one of --ssh user@host, --device NAME or --rootfs PATH", {
            fix: "e.g. itera flash firmware-bundles/m-0.1.0-rpi5 --ssh pi@raspberrypi.local",
          });
        }
        const config = agentConfigFromOptions(o);
        const trustedKey = o.key ? await readTrustedKey(o.key) : undefined;
        const say = (line: string) => process.stderr.write(`${line}\n`);
        let report: FlashReport;
        if (o.rootfs !== undefined) {
          report = await flashRootfs({
            bundle,
            rootfs: o.rootfs,
            ...(trustedKey ? { trustedKey } : {}),
            ...(config ? { config } : {}),
            dryRun: o.dryRun === true,
            say,
          });
          const name = o.name ?? config?.device_id;
          if (o.inventory && !o.dryRun && name) {
            await upsertDevice(name, {
              profile: report.profile,
              fleet: config?.fleet,
              installed_version: report.current ?? undefined,
              bundle_id: report.bundle_id,
              last_flash: {
                at: new Date().toISOString(),
                version: report.version,
                result: "written-to-rootfs",
              },
            });
          }
        } else {
          if (o.serviceManager !== "systemd" && o.serviceManager !== "none") {
            throw new IteraError(`invalid --service-manager '${o.serviceManager}'`, {
              fix: "use systemd or none",
            });
          }
          const known = o.device ? await findDevice(o.device) : undefined;
          const destination = o.ssh ?? known?.ssh;
          if (!destination) {
            throw new IteraError(`device '${o.device}' has no ssh address in the inventory`, {
              fix: `itera devices add ${o.device} --ssh user@host`,
            });
          }
          const port = o.port !== undefined ? intOption(o.port, "--port", 1, 65535) : known?.port;
          const identity = o.identity ?? known?.identity;
          const target: SshTarget = {
            destination: checkDestination(destination),
            ...(port !== undefined ? { port } : {}),
            ...(identity ? { identity } : {}),
            ...(o.knownHosts ? { knownHosts: o.knownHosts } : {}),
            acceptNewHostKey: o.acceptNewHostKey === true,
            sudo: o.sudo === true,
          };
          report = await flashOverSsh({
            bundle,
            target,
            prefix: checkPrefix(o.prefix),
            systemctl: o.serviceManager === "none" ? null : o.systemctl,
            healthTimeoutS: intOption(o.healthTimeout, "--health-timeout", 1, 3600),
            healthSettleS: intOption(o.healthSettle, "--health-settle", 0, 600),
            keep: intOption(o.keep, "--keep", 1, 100),
            ...(trustedKey ? { trustedKey } : {}),
            ...(config ? { config } : {}),
            dryRun: o.dryRun === true,
            onProgress: copyProgress(),
            say,
          });
          const name = o.name ?? o.device ?? config?.device_id ?? destination.split("@").at(-1)!;
          if (o.inventory && !o.dryRun) {
            const now = new Date().toISOString();
            await upsertDevice(name, {
              ssh: destination,
              port,
              identity,
              profile: report.profile,
              fleet: config?.fleet,
              installed_version: report.current ?? undefined,
              bundle_id: report.current === report.version ? report.bundle_id : undefined,
              last_seen: now,
              last_flash: {
                at: now,
                version: report.version,
                result: report.result === "rolled-back" ? "rolled-back" : "installed",
              },
            });
          }
        }
        if (o.json) printJson(report);
        else if (report.dry_run) say(`dry run: nothing was changed`);
        else if (report.ok) {
          say(
            report.mode === "rootfs"
              ? `${report.bundle_id} written to ${report.device}; the agent starts at first boot`
              : `${report.bundle_id} installed on ${report.device} and healthy (previous: ${report.previous ?? "none"})`,
          );
          if (report.copy) say(copySummary(report));
        }
        if (!report.ok && report.error) {
          const e = new IteraError(report.error.error, {
            ...(report.error.where ? { where: report.error.where } : {}),
            ...(report.error.fix ? { fix: report.error.fix } : {}),
          });
          process.stderr.write(`${e.format()}\n`);
          process.exitCode = 4;
        }
      }),
    );
}
