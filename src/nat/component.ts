// The NAT service as a part of the onsite daemon: picks the backend from the config, owns
// the service's lifecycle, and serves `nat.add|list|del|flush` (and seed 001's request
// shape) on the daemon's control socket. The object it returns fits the daemon's
// Component interface (src/roles/daemon.ts) structurally, so nat imports nothing upward.
import type { Config } from "../config.ts";
import type { ControlServer } from "../control.ts";
import { autoNatBackend, gatherFacts } from "../doctor.ts";
import { RuntimeError, UsageError } from "../errors.ts";
import type { Logger } from "../log.ts";
import { spawnExec, type Exec, type FirewallBackend } from "./backend.ts";
import { conntrackCutter } from "./conntrack.ts";
import { IptablesBackend } from "./iptables.ts";
import { NftBackend } from "./nft.ts";
import { fromSeedRequest, FieldError, type NatRequest, type OwnAddress } from "./rule.ts";
import { NatService, type AddResult, type RuleView } from "./service.ts";
import { FileRuleStore } from "./store.ts";
import type { SessionBinding } from "./session.ts";
import { parseIPv4 } from "../netaddr.ts";
import { systemClock, type Clock } from "../clock.ts";

/** The device's own addresses change rarely; re-read them at most this often. */
export const OWN_ADDRESSES_TTL_MS = 5_000;

export interface NatComponentOptions {
  control: ControlServer;
  config: Config;
  log: Logger;
  exec?: Exec;
  /** Overrides the backend the config would pick (tests). */
  backend?: FirewallBackend;
  /** Rule deadlines and the address cache run on its monotonic now(); see service.ts "Time". */
  clock?: Clock;
}

export interface NatComponent {
  readonly name: "nat";
  start(): Promise<void>;
  close(): Promise<void>;
  status(): Record<string, unknown>;
  /** For a master's request inside a session: owner is the session id, src its peer's address;
   * `session` binds the rule to the session (its targets, its end, the caps). */
  add(request: NatRequest, owner: string, session?: SessionBinding): Promise<AddResult>;
  /** Called when a session ends: removes the rules it asked for. */
  removeByOwner(owner: string): Promise<number>;
  /** A master revoking its grant early (issue 15): removes rule `id` if `owner` owns it; null if it does not exist or is another's. */
  removeOwned(owner: string, id: string): Promise<RuleView | null>;
}

/** Picks the backend named by `nat.backend`; "auto" decides as `agent doctor` reports. */
export function chooseBackend(cfg: Config, exec: Exec): FirewallBackend {
  let name = cfg.nat.backend;
  if (name === "auto") {
    const pick = autoNatBackend(gatherFacts({ stateDir: cfg.state_dir }));
    if (!pick) throw new RuntimeError("no NAT backend: neither nft nor iptables with iptables-restore is installed", "run `agent doctor --role onsite` for the install command");
    name = pick;
  }
  return name === "nft" ? new NftBackend(exec) : new IptablesBackend(exec);
}

/** Parses `ip -j -4 addr show` output into the device's addresses. Pure. */
export function parseIpAddrJson(text: string): OwnAddress[] {
  const out: OwnAddress[] = [];
  const links = JSON.parse(text) as { addr_info?: { family?: string; local?: string; prefixlen?: number }[] }[];
  for (const l of links) {
    for (const a of l.addr_info ?? []) {
      if (a.family !== "inet" || typeof a.local !== "string" || typeof a.prefixlen !== "number") continue;
      try {
        out.push({ addr: parseIPv4(a.local), prefix: a.prefixlen });
      } catch {
        // not a plain dotted quad: not something a target could equal
      }
    }
  }
  return out;
}

/** Parses `ip -j link show` output into the interface names. Pure. */
export function parseIpLinkJson(text: string): string[] {
  const links = JSON.parse(text) as { ifname?: unknown }[];
  return links.flatMap((l) => (typeof l.ifname === "string" ? [l.ifname] : []));
}

function interfaceReader(exec: Exec, clock: Clock): () => Promise<string[]> {
  let cached: { at: number; value: string[] } | undefined;
  return async () => {
    if (cached && clock.now() - cached.at < OWN_ADDRESSES_TTL_MS) return cached.value;
    const r = await exec(["ip", "-j", "link", "show"]);
    if (r.code !== 0) throw new RuntimeError(`cannot list this device's interfaces: ip exited ${r.code}`);
    cached = { at: clock.now(), value: parseIpLinkJson(r.stdout) };
    return cached.value;
  };
}

function ownAddressReader(exec: Exec, clock: Clock): () => Promise<OwnAddress[]> {
  let cached: { at: number; value: OwnAddress[] } | undefined;
  return async () => {
    if (cached && clock.now() - cached.at < OWN_ADDRESSES_TTL_MS) return cached.value;
    const r = await exec(["ip", "-j", "-4", "addr", "show"]);
    // Without the list the device's own addresses cannot be refused: fail closed.
    if (r.code !== 0) throw new RuntimeError(`cannot read this device's addresses: ip exited ${r.code}: ${r.stderr.trim()}`);
    cached = { at: clock.now(), value: parseIpAddrJson(r.stdout) };
    return cached.value;
  };
}

export function createNatComponent(opts: NatComponentOptions): NatComponent {
  const { control, config, log } = opts;
  const exec = opts.exec ?? spawnExec;
  const clock = opts.clock ?? systemClock;
  let service: NatService | undefined;
  let unavailable = "the NAT service has not started";

  const need = (): NatService => {
    if (!service) throw new RuntimeError(`NAT is unavailable: ${unavailable}`, "see the daemon's log and `agent doctor --role onsite`");
    return service;
  };
  const str = (v: unknown, what: string): string => {
    if (typeof v !== "string") throw new UsageError(`${what}: expected a string`);
    return v;
  };

  control.handle("nat.add", async (a) => need().add({ proto: a.proto, src: a.src, iface: a.iface, port: a.port, to: a.to, ttl: a.ttl }, "local"));
  control.handle("nat.list", () => ({ backend: need().backendName, now: new Date(clock.wall()).toISOString(), rules: need().list() }));
  control.handle("nat.del", async (a) => need().del(str(a.id, "id")));
  control.handle("nat.flush", async () => ({ removed: await need().flush() }));
  // Seed 001's shape: one JSON object with "action" and no "cmd". Its api_key is accepted
  // and ignored: the socket is owner-only, which is the authentication here.
  control.fallback(async (req) => {
    if (!("action" in req)) return undefined;
    let seed;
    try {
      seed = fromSeedRequest(req);
    } catch (e) {
      throw e instanceof FieldError ? new UsageError(e.message) : e;
    }
    if (seed.action === "add") return need().add(seed.request, "local");
    return { deleted: await need().delMatching(seed.request) };
  });

  return {
    name: "nat",
    async start() {
      const nlog = log;
      try {
        const backend = opts.backend ?? chooseBackend(config, exec);
        const s = new NatService({
          backend,
          store: new FileRuleStore(config.state_dir),
          limits: {
            minTtlMs: config.nat.min_ttl,
            maxTtlMs: config.nat.max_ttl,
            maxRules: config.nat.max_rules,
            allowAnySource: config.nat.allow_any_source,
            allow: config.allow,
          },
          keepOnStop: config.nat.keep_on_stop,
          sessionCaps: { perSession: config.nat.max_rules_per_session, perMaster: config.nat.max_rules_per_master },
          ownAddresses: ownAddressReader(exec, clock),
          interfaces: interfaceReader(exec, clock),
          cutFlows: conntrackCutter(exec),
          log: nlog,
          clock,
        });
        await s.start();
        service = s;
      } catch (e) {
        // The daemon's other duties (relay sessions) do not depend on NAT: report, go on.
        unavailable = (e as Error).message;
        nlog.error("NAT service unavailable", e);
      }
    },
    async close() {
      await service?.close();
    },
    status() {
      return service ? service.status() : { unavailable };
    },
    add(request, owner, session) {
      return need().add(request, owner, session);
    },
    removeByOwner(owner) {
      return service ? service.removeByOwner(owner) : Promise.resolve(0);
    },
    removeOwned(owner, id) {
      return need().removeOwned(owner, id);
    },
  };
}
