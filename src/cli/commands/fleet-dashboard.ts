import type { Command } from "commander";
import { IteraError } from "../../errors.js";
import { runDashboard } from "../../fleet/dashboard.js";
import { openFleetHistory } from "../../fleet/report-source.js";
import { defaultFleetDb } from "../../fleet/store.js";
import { addBrokerOptions, type BrokerCliOptions, brokerOptions, checkId } from "../../protocol/options.js";
import { brokerText } from "../../report/dashboard-page.js";
import { action } from "../run.js";

interface DashboardCliOptions extends BrokerCliOptions {
  fleet: string;
  port: string;
  host: string;
  db?: string;
  token?: string;
}

/** `itera fleet dashboard`: a live page of the fleet's devices, served by the coordinator. */
export function registerFleetDashboard(fleet: Command): void {
  addBrokerOptions(
    fleet
      .command("dashboard")
      .description(
        "serve a live page of the fleet's devices (state, version, temperature, tokens/s, mJ/token) and its running and finished jobs (benchmark, update, tune)",
      )
      .requiredOption("--fleet <name>", "fleet name")
      .option("--port <n>", "HTTP port (0: any free port)", "8090")
      .option(
        "--host <addr>",
        "address to listen on (0.0.0.0: every interface; then pass --token)",
        "127.0.0.1",
      )
      .option(
        "--db <path>",
        `fleet history database whose finished jobs are listed (benchmarks with their reports); given, telemetry is stored in it too (default ${defaultFleetDb()}, read only for the list)`,
      )
      .option(
        "--token <secret>",
        "require ?token=SECRET (or Authorization: Bearer) for the page and its stream",
      ),
  ).action(
    action(async (opts: DashboardCliOptions) => {
      const port = Number(opts.port);
      if (!Number.isInteger(port) || port < 0 || port > 65535) {
        throw new IteraError(`--port must be a port number from 0 to 65535, not '${opts.port}'`, {
          where: "--port",
          fix: "give --port e.g. 8090",
        });
      }
      // Another program's SQLite file given as --db is refused, never given itera's tables.
      const history = openFleetHistory(opts.db ?? defaultFleetDb(), { create: true });
      const ac = new AbortController();
      const stop = () => ac.abort();
      process.once("SIGINT", stop);
      process.once("SIGTERM", stop);
      try {
        await runDashboard({
          broker: brokerOptions(opts),
          fleet: checkId(opts.fleet, "--fleet"),
          host: opts.host,
          port,
          ...(opts.token ? { token: opts.token } : {}),
          history,
          ...(opts.db ? { store: history } : {}),
          signal: ac.signal,
          onListening: (url) =>
            process.stderr.write(`dashboard: ${url}/${opts.token ? "?token=..." : ""} (Ctrl-C to stop)\n`),
          // Each change of the broker connection, so a dashboard without devices says why.
          onBroker: (b) => process.stderr.write(`dashboard: ${brokerText(b)}\n`),
        });
      } finally {
        process.off("SIGINT", stop);
        process.off("SIGTERM", stop);
        history.close();
      }
    }),
  );
}
