import type { Command } from "commander";
import { startBroker } from "../../fleet/broker.js";
import { positive } from "../../protocol/options.js";
import { action, printJson } from "../run.js";

interface BrokerCliOptions {
  port: string;
  host: string;
  json?: boolean;
}

/** `itera broker`: an embedded MQTT broker (aedes) for demos and small labs; stops on Ctrl-C / SIGTERM. */
export function registerBroker(program: Command): void {
  program
    .command("broker")
    .description("run an embedded MQTT 3.1.1 broker (aedes; in-memory sessions, no TLS/auth) until stopped")
    .option("--port <n>", "TCP port (0 = any free port)", "1883")
    .option("--host <addr>", "address to listen on", "127.0.0.1")
    .option("--json", "print {url, host, port} as JSON once listening")
    .action(
      action(async (opts: BrokerCliOptions) => {
        const port = opts.port === "0" ? 0 : positive(opts.port, "--port", true);
        const broker = await startBroker({ port, host: opts.host });
        if (opts.json) printJson({ url: broker.url, host: broker.host, port: broker.port });
        else process.stdout.write(`itera broker listening on ${broker.url} (in-memory; Ctrl-C to stop)\n`);
        await new Promise<void>((resolve) => {
          process.once("SIGINT", resolve);
          process.once("SIGTERM", resolve);
        });
        await broker.close();
      }),
    );
}
