import { randomBytes } from "node:crypto";
import type { Command } from "commander";
import { IteraError } from "../../errors.js";
import { setPassword } from "../../fleet/broker-auth.js";
import { startBroker } from "../../fleet/broker.js";
import { checkId, positive } from "../../protocol/options.js";
import { action, collect, printJson } from "../run.js";

interface BrokerCliOptions {
  port: string;
  host: string;
  passwordFile?: string;
  coordinator?: string[];
  reader?: string[];
  json?: boolean;
}

const ANONYMOUS_WARNING = [
  "WARNING: anonymous broker: any client can connect without a password and publish to any topic,",
  "WARNING: including another device's job results (a forged result would be accepted as that device's).",
  "WARNING: for anything but a demo run `itera broker passwd --file FILE --user NAME` for the",
  "WARNING: coordinator and each device, then `itera broker --password-file FILE` (docs/fleet.md).",
].join("\n");

interface PasswdCliOptions {
  file: string;
  user: string;
  passwordStdin?: boolean;
  json?: boolean;
}

async function readStdinLine(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString("utf8").split(/\r?\n/)[0] ?? "";
}

/** `itera broker`: an embedded MQTT broker (aedes) for demos and small labs; stops on Ctrl-C / SIGTERM. */
export function registerBroker(program: Command): void {
  const broker = program
    .command("broker")
    // `itera broker passwd --json` is the subcommand's option, not the broker's.
    .enablePositionalOptions()
    .description(
      "run an embedded MQTT 3.1.1 broker (aedes; in-memory sessions, no TLS) until stopped; " +
        "--password-file turns on logins and per-device topic rights",
    )
    .option("--port <n>", "TCP port (0 = any free port)", "1883")
    .option("--host <addr>", "address to listen on", "127.0.0.1")
    .option(
      "--password-file <file>",
      "Mosquitto-format password file (`itera broker passwd` or mosquitto_passwd); without it the broker is anonymous",
    )
    .option(
      "--coordinator <user>",
      "a user that may send jobs and read the whole fleet (repeatable; default: coordinator)",
      collect,
    )
    .option("--reader <user>", "a user that may only read (e.g. telegraf; repeatable)", collect)
    .option("--json", "print {url, host, port, anonymous} as JSON once listening")
    .action(
      action(async (opts: BrokerCliOptions) => {
        const port = opts.port === "0" ? 0 : positive(opts.port, "--port", true);
        if (!opts.passwordFile && (opts.coordinator || opts.reader)) {
          throw new IteraError("--coordinator and --reader need a password file", {
            where: "itera broker",
            fix: "add --password-file FILE (users from `itera broker passwd --file FILE --user NAME`)",
          });
        }
        const coordinators = new Set(
          (opts.coordinator ?? ["coordinator"]).map((u) => checkId(u, "--coordinator")),
        );
        const readers = new Set((opts.reader ?? []).map((u) => checkId(u, "--reader")));
        const log = (line: string) => process.stderr.write(`itera broker: ${line}\n`);
        const b = await startBroker({
          port,
          host: opts.host,
          ...(opts.passwordFile
            ? { auth: { passwordFile: opts.passwordFile, policy: { coordinators, readers } } }
            : {}),
          log,
        });
        if (b.anonymous) process.stderr.write(`${ANONYMOUS_WARNING}\n`);
        if (opts.json) {
          printJson({
            url: b.url,
            host: b.host,
            port: b.port,
            anonymous: b.anonymous,
            ...(b.anonymous
              ? { warning: "anonymous broker: any client can publish any device's results" }
              : {}),
          });
        } else {
          const mode = b.anonymous
            ? "ANONYMOUS, no logins"
            : `logins from ${opts.passwordFile}; coordinators: ${[...coordinators].join(", ")}`;
          process.stdout.write(`itera broker listening on ${b.url} (${mode}; in-memory; Ctrl-C to stop)\n`);
        }
        await new Promise<void>((resolve) => {
          process.once("SIGINT", resolve);
          process.once("SIGTERM", resolve);
        });
        await b.close();
      }),
    );

  broker
    .command("passwd")
    .description(
      "add or replace a user in a password file (Mosquitto's format, PBKDF2-SHA512); a device's user name is its device id",
    )
    .requiredOption("--file <file>", "password file (created with mode 600 if missing)")
    .requiredOption("--user <name>", "user name: a device id, or the coordinator's name")
    .option(
      "--password-stdin",
      "read the password from the first line of stdin (default: generate one and print it)",
    )
    .option("--json", "print {file, user, action, password} as JSON")
    .action(
      action(async (opts: PasswdCliOptions) => {
        const generated = !opts.passwordStdin;
        const password = generated ? randomBytes(18).toString("base64url") : await readStdinLine();
        if (password === "") {
          throw new IteraError("empty password on stdin", {
            where: "--password-stdin",
            fix: "pipe the password in (e.g. `printf '%s\\n' \"$PW\" | itera broker passwd ...`) or leave out --password-stdin to generate one",
          });
        }
        const done = await setPassword(opts.file, opts.user, password);
        if (opts.json) {
          printJson({ file: opts.file, user: opts.user, action: done, ...(generated ? { password } : {}) });
        } else {
          process.stdout.write(`${done} user '${opts.user}' in ${opts.file}\n`);
          if (generated) process.stdout.write(`password: ${password}\n`);
        }
      }),
    );
}
