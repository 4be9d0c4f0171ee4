// The tunnel hosts a daemon has until a real one (TUN/TAP devices, routes, rules) is composed in:
// every open is refused with a sentence that says so, and there is nothing to sweep.
import { TunnelRefused, type MasterTunnelHost, type OnsiteTunnelHost } from "./device.ts";

const why = (role: string) =>
  new TunnelRefused("no_device", `this ${role} has no packet tunnel host: TUN/TAP tunnels are not built into this agent yet (TCP and UDP forwards work)`);

export function refusingOnsiteHost(): OnsiteTunnelHost {
  return { open: async () => Promise.reject(why("onsite device")), sweep: async () => [] };
}

export function refusingMasterHost(): MasterTunnelHost {
  return { open: async () => Promise.reject(why("master")), sweep: async () => [], onSecondaryChange: () => () => {} };
}
