import type { Command } from "commander";
import { IteraError } from "../../errors.js";
import { checkDevice, type DeviceStatus } from "../../deploy/device-check.js";
import {
  findDevice,
  inventoryPath,
  loadInventory,
  removeDevice,
  upsertDevice,
} from "../../deploy/inventory.js";
import { checkPrefix } from "../../deploy/layout.js";
import { checkDestination } from "../../deploy/ssh.js";
import { markdownTable } from "../../util/table.js";
import { action, printJson } from "../run.js";

export function registerDevices(program: Command): void {
  const devices = program
    .command("devices")
    .description(
      `the device inventory (${"$"}XDG_CONFIG_HOME/itera/devices.json): host, profile, installed version, last seen`,
    );

  // `devices list --json` leaves --json to the parent `devices` command: read it from both.
  const wantsJson = (cmd: Command) => cmd.optsWithGlobals<{ json?: boolean }>().json === true;

  const list = action(async (_o: unknown, cmd: Command) => {
    const all = await loadInventory();
    if (wantsJson(cmd)) return printJson(all);
    if (all.length === 0) {
      process.stderr.write(
        `no devices yet (${inventoryPath()}); add one with \`itera devices add NAME --ssh user@host\`\n`,
      );
      return;
    }
    console.log(
      markdownTable(
        ["name", "ssh", "profile", "fleet", "installed", "last seen", "last flash"],
        all.map((d) => [
          d.name,
          d.ssh ? `${d.ssh}${d.port ? `:${d.port}` : ""}` : "-",
          d.profile ?? "-",
          d.fleet ?? "-",
          d.installed_version ?? "-",
          d.last_seen ?? "-",
          d.last_flash ? `${d.last_flash.version} ${d.last_flash.result}` : "-",
        ]),
      ),
    );
  });

  devices.option("--json", "machine-readable output").action(list);
  devices
    .command("list")
    .description("list the devices")
    .option("--json", "machine-readable output")
    .action(list);

  devices
    .command("add")
    .description("add a device (or change its fields)")
    .argument("<name>", "a short name, e.g. pi-kitchen")
    .option("--ssh <user@host>", "ssh address")
    .option("--port <n>", "ssh port")
    .option("--identity <file>", "ssh private key")
    .option("--profile <name>", "device profile, e.g. rpi5")
    .option("--fleet <name>", "fleet it belongs to")
    .option("--json", "print the entry as JSON")
    .action(
      action(
        async (
          name: string,
          o: {
            ssh?: string;
            port?: string;
            identity?: string;
            profile?: string;
            fleet?: string;
          },
          cmd: Command,
        ) => {
          const port = o.port === undefined ? undefined : Number(o.port);
          if (port !== undefined && !(Number.isInteger(port) && port >= 1 && port <= 65535)) {
            throw new IteraError(`invalid --port '${o.port}'`, { fix: "give a port from 1 to 65535" });
          }
          const entry = await upsertDevice(name, {
            ssh: o.ssh === undefined ? undefined : checkDestination(o.ssh),
            port,
            identity: o.identity,
            profile: o.profile,
            fleet: o.fleet,
          });
          if (wantsJson(cmd)) printJson(entry);
          else process.stderr.write(`device ${entry.name} saved in ${inventoryPath()}\n`);
        },
      ),
    );

  devices
    .command("remove")
    .description("remove a device from the inventory")
    .argument("<name>")
    .option("--json", "print {removed: NAME}")
    .action(
      action(async (name: string, _o: unknown, cmd: Command) => {
        await removeDevice(name);
        if (wantsJson(cmd)) printJson({ removed: name });
        else process.stderr.write(`device ${name} removed\n`);
      }),
    );

  devices
    .command("check")
    .description(
      "connect to devices (all with an ssh address, or the named ones): update last seen and installed version",
    )
    .argument("[names...]", "devices to check (default: all)")
    .option("--known-hosts <file>", "known_hosts file (default: ssh's own)")
    .option("--prefix <path>", "the devices' root", "/")
    .option("--sudo", "read through `sudo -n`")
    .option("--json", "machine-readable output")
    .action(
      action(
        async (names: string[], o: { knownHosts?: string; prefix: string; sudo?: boolean }, cmd: Command) => {
          const all = await loadInventory();
          const chosen =
            names.length > 0 ? await Promise.all(names.map((n) => findDevice(n))) : all.filter((d) => d.ssh);
          const prefix = checkPrefix(o.prefix);
          const statuses: DeviceStatus[] = [];
          for (const d of chosen) {
            const s = await checkDevice(d, {
              prefix,
              ...(o.knownHosts ? { knownHosts: o.knownHosts } : {}),
              sudo: o.sudo === true,
            });
            statuses.push(s);
            if (s.reachable && !s.error) {
              await upsertDevice(d.name, {
                last_seen: new Date().toISOString(),
                installed_version: s.installed_version ?? undefined,
              });
            }
          }
          if (wantsJson(cmd)) printJson(statuses);
          else {
            console.log(
              markdownTable(
                ["name", "reachable", "arch", "installed", "free MiB", "error"],
                statuses.map((s) => [
                  s.name,
                  s.reachable ? "yes" : "no",
                  s.machine ?? "-",
                  s.installed_version ?? "-",
                  s.free_kb === undefined ? "-" : Math.floor(s.free_kb / 1024),
                  s.error ?? "",
                ]),
              ),
            );
          }
          if (statuses.some((s) => !s.reachable || s.error)) process.exitCode = 3;
        },
      ),
    );
}
