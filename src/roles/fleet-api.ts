// The relay's fleet commands on its control socket (issue 14): `agent devices` (with state,
// heartbeat and certificate), `devices forget`, `devices history`, `agent refusals`. Each
// request comes from outside the process, so each field is checked here.
import { NotFoundError, UsageError } from "../errors.ts";
import type { RelayServer } from "../tunnel/relay/server.ts";
import { groupRefusals, readRefusalFile } from "../tunnel/relay/refusals.ts";
import type { RelayFleetApi } from "./api.ts";

function idOf(req: unknown): string {
  const id = (req as { id?: unknown } | undefined)?.id;
  if (typeof id !== "string" || id.length === 0 || id.length > 63) throw new UsageError("expected a device id (id: a string of 1-63 characters)");
  return id;
}

export function fleetApi(server: RelayServer, refusalFile: string): RelayFleetApi {
  return {
    devicesForget: (req) => {
      const id = idOf(req);
      const r = server.forgetDevice(id);
      if (r === "online") throw new UsageError(`device ${id} is online; only an offline device can be forgotten`, "revoke its certificate first (`agent pki revoke`), or wait until it disconnects");
      if (r === "unknown") throw new NotFoundError(`no device ${JSON.stringify(id)} in the inventory`, "see `agent devices --all`");
      return { forgotten: id };
    },
    devicesHistory: (req) => {
      const id = idOf(req);
      const h = server.deviceHistory(id);
      if (!h) throw new NotFoundError(`no device ${JSON.stringify(id)} in the inventory`, "see `agent devices --all`");
      return h.map((e) => ({ at: new Date(e.at).toISOString(), kind: e.kind, address: e.address, reason: e.reason }));
    },
    refusalsReport: (req) => {
      const since = (req as { since?: unknown } | undefined)?.since;
      if (since !== undefined && (typeof since !== "number" || !Number.isFinite(since))) throw new UsageError("since: expected wall-clock milliseconds");
      // The file holds what the ring forgot and what came before a restart; the ring when there is no file.
      const all = readRefusalFile(refusalFile) ?? server.refusals;
      return { now: new Date().toISOString(), groups: groupRefusals(all, (since as number | undefined) ?? -Infinity) };
    },
  };
}
