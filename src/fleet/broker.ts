import { createServer, type Server, type Socket } from "node:net";
import { Aedes } from "aedes";
import { IteraError } from "../errors.js";

export interface EmbeddedBroker {
  host: string;
  port: number;
  url: string;
  close(): Promise<void>;
}

/**
 * An embedded MQTT 3.1.1 broker (aedes on a plain TCP server) for demos, tests and small labs.
 * Sessions, retained messages and queued QoS 1 messages live in memory only: they are lost when the
 * broker stops, and it has no TLS, authentication or `$share`. Production fleets use Mosquitto,
 * EMQX or HiveMQ (docs/fleet.md).
 */
export async function startBroker(opts: { port: number; host: string }): Promise<EmbeddedBroker> {
  const aedes = await Aedes.createBroker();
  const sockets = new Set<Socket>();
  const server: Server = createServer((socket) => {
    sockets.add(socket);
    socket.once("close", () => sockets.delete(socket));
    aedes.handle(socket);
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", (e: NodeJS.ErrnoException) =>
      reject(
        new IteraError(`cannot listen on ${opts.host}:${opts.port}: ${e.code ?? e.message}`, {
          where: "itera broker",
          fix:
            e.code === "EADDRINUSE"
              ? "choose another --port (or stop the process using it)"
              : "check --host/--port",
        }),
      ),
    );
    server.listen(opts.port, opts.host, () => resolve());
  });
  const port = (server.address() as { port: number }).port;
  return {
    host: opts.host,
    port,
    url: `mqtt://${opts.host}:${port}`,
    close: () =>
      new Promise<void>((resolve) => {
        aedes.close(() => server.close(() => resolve()));
        // Open client sockets keep server.close() waiting; the broker is closing anyway.
        for (const s of sockets) s.destroy();
      }),
  };
}
