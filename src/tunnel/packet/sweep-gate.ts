// A daemon sweeps its tunnel host's leftovers (agent-owned devices, rules, dnsmasq of a run that
// was killed) when it starts; a tunnel opened meanwhile must not be made and then swept away as
// a "leftover". The gate holds every open until the sweep is done. Without a sweep, opens go at once.
import type { MasterTunnelHost, OnsiteTunnelHost } from "./device.ts";

interface Gate {
  wait(): Promise<unknown>;
  sweep(run: () => Promise<string[]>): Promise<string[]>;
}

function gate(): Gate {
  let swept: Promise<unknown> = Promise.resolve();
  return {
    wait: () => swept,
    sweep(run) {
      const p = run();
      swept = p.catch(() => undefined);
      return p;
    },
  };
}

export function gateOnsiteHost(host: OnsiteTunnelHost): OnsiteTunnelHost {
  const g = gate();
  return {
    open: async (req) => {
      await g.wait();
      return host.open(req);
    },
    sweep: () => g.sweep(() => host.sweep()),
  };
}

export function gateMasterHost(host: MasterTunnelHost): MasterTunnelHost {
  const g = gate();
  return {
    open: async (req) => {
      await g.wait();
      return host.open(req);
    },
    sweep: () => g.sweep(() => host.sweep()),
    onSecondaryChange: (h) => host.onSecondaryChange(h),
    // Every optional method of the seam passes through, or the gate silently drops it.
    ...(host.precheck ? { precheck: (req: Parameters<NonNullable<MasterTunnelHost["precheck"]>>[0]) => host.precheck!(req) } : {}),
  };
}
