// The service catalogue of a master (issue 15): what each onsite device advertises (its
// [[service]] tables, carried in INVENTORY and DEVICES) merged with the master's own
// [[service]] entries, each with what a GUI offers for its kind. Pure: the master role feeds
// it the relay's device list and its config.
import type { ServiceConfig } from "../config.ts";
import { parseHostPort } from "../netaddr.ts";
import type { DeviceInfo, ServiceKind } from "../transport/messages.ts";
import type { ServiceEntry, ServiceOffer } from "./api.ts";

/** The placeholder for the forward's local port in an offer's `url` and `command`. */
export const PORT_PLACEHOLDER = "{port}";

/**
 * What a GUI offers for a service of `kind` at `target` behind `device` (pure). Every offer
 * starts with a forward to the target on a free local port (`0:TARGET`); the URL or command
 * then names 127.0.0.1 and "{port}". The ssh command pins the host key under an alias of the
 * device and target: forwards come and go on 127.0.0.1 with different ports, and without the
 * alias every new port would be a new "unknown host".
 */
export function serviceOffer(kind: ServiceKind, target: string, device: string): ServiceOffer {
  const forward = `0:${target}`;
  const host = parseHostPort(target, "HOST:PORT").host;
  const at = `127.0.0.1:${PORT_PLACEHOLDER}`;
  switch (kind) {
    case "http":
    case "https":
      return { action: "tab", forward, url: `${kind}://${at}/`, command: null };
    case "ssh":
      return { action: "command", forward, url: `ssh://${at}`, command: `ssh -p ${PORT_PLACEHOLDER} -o HostKeyAlias=${device}-${host} 127.0.0.1` };
    case "rdp":
      // Microsoft's rdp: URI ("full address=s:HOST:PORT"), and the FreeRDP client's command.
      return { action: "url", forward, url: `rdp://full%20address=s:${at}`, command: `xfreerdp /v:${at}` };
    case "vnc":
      // vnc://HOST:PORT (RFC 7869); vncviewer takes HOST::PORT for a port (not a display).
      return { action: "url", forward, url: `vnc://${at}`, command: `vncviewer 127.0.0.1::${PORT_PLACEHOLDER}` };
    case "tcp":
      return { action: "forward", forward, url: null, command: null };
  }
}

/** An offer with the forward's local port filled in (pure). */
export function fillOffer(offer: ServiceOffer, port: number): ServiceOffer {
  const fill = (s: string | null) => (s === null ? null : s.replaceAll(PORT_PLACEHOLDER, String(port)));
  return { ...offer, forward: offer.forward.replace(/^0:/, `${port}:`), url: fill(offer.url), command: fill(offer.command) };
}

/**
 * The merged catalogue (pure): every device's advertised services, then the master's own
 * entries, by device, source (device first) and name. `onsite` keeps one device's. A master
 * entry for a device the relay does not list is kept (offline, no location): the operator
 * wrote it, and the device may come back.
 */
export function mergeCatalogue(devices: readonly DeviceInfo[], own: readonly ServiceConfig[], onsite?: string): ServiceEntry[] {
  const byId = new Map(devices.map((d) => [d.id, d]));
  const out: ServiceEntry[] = [];
  for (const d of devices) {
    if (onsite !== undefined && d.id !== onsite) continue;
    for (const s of d.services ?? []) out.push(entry(d.id, s, "device", d));
  }
  for (const s of own) {
    const id = s.device!;
    if (onsite !== undefined && id !== onsite) continue;
    out.push(entry(id, s, "master", byId.get(id)));
  }
  const rank = { device: 0, master: 1 } as const;
  return out.sort((a, b) => a.device.localeCompare(b.device) || rank[a.source] - rank[b.source] || a.name.localeCompare(b.name));
}

function entry(device: string, s: { name: string; target: string; kind: ServiceKind; description?: string }, source: "device" | "master", d: DeviceInfo | undefined): ServiceEntry {
  return {
    device,
    name: s.name,
    target: s.target,
    kind: s.kind,
    ...(s.description !== undefined ? { description: s.description } : {}),
    source,
    location: d?.location ?? "",
    online: d?.online ?? false,
    offer: serviceOffer(s.kind, s.target, device),
  };
}
