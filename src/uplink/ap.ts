// The access point: writes hostapd and dnsmasq configurations into the state directory,
// gives the AP interface its address, fences the AP subnet off (nft table + per-interface
// forwarding off, opened only for what `ap.forward` lists), and supervises hostapd and
// dnsmasq. `stop()` undoes all of it.
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { writeFileAtomic } from "../os/atomic.ts";
import { join } from "node:path";
import type { ApConfig } from "../config.ts";
import type { Logger } from "../log.ts";
import { formatIPv4 } from "../netaddr.ts";
import { DNSMASQ_USER, generatePassphrase, NFT_TABLE, renderDnsmasq, renderHostapd, renderNft } from "./apconf.ts";
import { describeFailure, type Exec } from "../os/spawn.ts";
import { stopOrphan, Supervisor, type SupervisedStatus } from "./supervisor.ts";
import { systemClock, type Clock } from "../clock.ts";

export interface ApStatus {
  running: boolean;
  since?: string;
  interface: string;
  ssid: string;
  address: string;
  security: string;
  hostapd?: SupervisedStatus;
  dnsmasq?: SupervisedStatus;
  error?: string;
}

/** Why a passphrase file's text is not a passphrase; undefined when it is one. Pure. */
export function passphraseFileProblem(text: string): string | undefined {
  const p = text.replace(/\r?\n$/, "");
  if (/^[\x20-\x7e]{12,63}$/.test(p)) return undefined;
  if (p.length === 0) return "it is empty";
  if (p.includes("\n")) return `it has ${p.split("\n").length} lines, expected one`;
  if (!/^[\x20-\x7e]*$/.test(p)) return "it holds characters other than printable ASCII";
  return `it holds ${p.length} characters, expected 12-63`;
}

/**
 * The AP passphrase: `[ap] passphrase` if set, else one generated for this device on first
 * use and kept in the state directory (mode 0600), so it can be printed on a label. A file
 * that is there but damaged is an error, never silently replaced: the passphrase on the
 * label would stop working.
 */
export function apPassphrase(ap: ApConfig, stateDir: string): string {
  if (ap.passphrase) return ap.passphrase;
  const file = join(stateDir, "ap-passphrase");
  if (existsSync(file)) {
    const text = readFileSync(file, "utf8");
    const problem = passphraseFileProblem(text);
    if (problem === undefined) return text.replace(/\r?\n$/, "");
    throw new Error(
      `the access point's passphrase file ${file} is damaged (${problem}); the access point stays down. ` +
        `Put the passphrase printed on the device's label back into it (one line, 12-63 printable ASCII characters), ` +
        `set [ap] passphrase, or delete the file to generate a new one (the label's passphrase then stops working)`,
    );
  }
  mkdirSync(stateDir, { recursive: true, mode: 0o700 });
  const p = generatePassphrase();
  writeFileAtomic(file, p + "\n", { mode: 0o600 });
  return p;
}

/** Whether /etc/passwd-format text has the user `name`. Pure. */
export function passwdHasUser(passwd: string, name: string): boolean {
  return passwd.split("\n").some((l) => l.split(":")[0] === name);
}

/** dnsmasq drops root to DNSMASQ_USER: a missing user is named before dnsmasq fails on it. */
function checkDnsmasqUser(): void {
  let passwd = "";
  try {
    passwd = readFileSync("/etc/passwd", "utf8");
  } catch {
    return; // no passwd file to read (NSS elsewhere): dnsmasq itself will say
  }
  if (!passwdHasUser(passwd, DNSMASQ_USER)) {
    throw new Error(`dnsmasq runs as user ${JSON.stringify(DNSMASQ_USER)}, which does not exist: install the dnsmasq package (it creates the user) or create it (useradd --system --no-create-home ${DNSMASQ_USER})`);
  }
}

export class AccessPoint {
  private readonly dir: string;
  private hostapd: Supervisor | undefined;
  private dnsmasq: Supervisor | undefined;
  private since: number | undefined;
  private lastError: string | undefined;
  private savedForwarding: string | undefined;
  private readonly pass: { value: string } | { error: string };

  constructor(
    private readonly ap: ApConfig,
    stateDir: string,
    private readonly exec: Exec,
    private readonly log: Logger,
    /** The [[uplink]] interface names, for `ap.forward`'s "uplinks" and "lan". */
    private readonly uplinks: readonly string[] = [],
    /** `since` is a time people read: its wall clock. */
    private readonly clock: Clock = systemClock,
  ) {
    this.dir = join(stateDir, "ap");
    // Read (or generated, for the label) at once; a damaged file keeps the AP down, named.
    try {
      this.pass = { value: apPassphrase(ap, stateDir) };
    } catch (e) {
      this.pass = { error: (e as Error).message };
      this.lastError = this.pass.error;
      log.error(this.pass.error);
    }
  }

  /** The passphrase; throws the damaged file's error. */
  get passphrase(): string {
    if ("error" in this.pass) throw new Error(this.pass.error);
    return this.pass.value;
  }

  get running(): boolean {
    return this.since !== undefined;
  }

  get paths() {
    return {
      hostapdConf: join(this.dir, "hostapd.conf"),
      dnsmasqConf: join(this.dir, "dnsmasq.conf"),
      hostapdPid: join(this.dir, "hostapd.pid"),
      dnsmasqPid: join(this.dir, "dnsmasq.pid"),
      leases: join(this.dir, "dnsmasq.leases"),
      /** The AP interface's forwarding before the AP; exists exactly while an AP is up. */
      savedForwarding: join(this.dir, "forwarding.saved"),
    };
  }

  private argv() {
    const p = this.paths;
    return { hostapd: [this.ap.hostapd, p.hostapdConf], dnsmasq: [this.ap.dnsmasq, "--keep-in-foreground", `--conf-file=${p.dnsmasqConf}`] };
  }

  /**
   * Undoes what a killed agent's AP left: stops its hostapd/dnsmasq, removes its firewall
   * table and, when it was up (the saved forwarding value is there), its address on the AP
   * interface and the interface's forwarding, so a radio that goes back to client mode does
   * not keep the AP subnet.
   */
  async cleanupOrphans(): Promise<void> {
    const a = this.argv();
    const p = this.paths;
    await stopOrphan(p.hostapdPid, a.hostapd, this.log);
    await stopOrphan(p.dnsmasqPid, a.dnsmasq, this.log);
    await this.exec(["nft", "delete", "table", "inet", NFT_TABLE]);
    if (!existsSync(p.savedForwarding)) return;
    const saved = readFileSync(p.savedForwarding, "utf8").trim();
    await this.exec(["ip", "addr", "del", this.cidr, "dev", this.ap.interface]);
    if (saved === "0" || saved === "1") {
      try {
        writeFileSync(`/proc/sys/net/ipv4/conf/${this.ap.interface}/forwarding`, saved);
      } catch {
        // interface gone
      }
    }
    rmSync(p.savedForwarding, { force: true });
    this.log.info(`removed the address ${this.cidr} a previous agent's access point left on ${this.ap.interface}; forwarding=${saved} restored`);
  }

  private get cidr(): string {
    return `${formatIPv4(this.ap.address.host)}/${this.ap.address.prefix}`;
  }

  private async run(argv: string[], input?: string): Promise<void> {
    let r;
    if (input !== undefined) {
      // nft -f reads a file: a private one in our directory (never a shell pipe).
      const f = join(this.dir, "fence.nft");
      writeFileSync(f, input, { mode: 0o600 });
      r = await this.exec([...argv, f]);
    } else r = await this.exec(argv);
    if (r.code !== 0) throw new Error(describeFailure(argv, r));
  }

  async start(): Promise<void> {
    if (this.running) return;
    const p = this.paths;
    const a = this.argv();
    const ifname = this.ap.interface;
    const addr = `${formatIPv4(this.ap.address.host)}/${this.ap.address.prefix}`;
    try {
      const passphrase = this.passphrase;
      checkDnsmasqUser();
      mkdirSync(this.dir, { recursive: true, mode: 0o700 });
      await this.cleanupOrphans();
      // Configurations hold the passphrase: owner only.
      writeFileSync(p.hostapdConf, renderHostapd(this.ap, passphrase), { mode: 0o600 });
      writeFileSync(p.dnsmasqConf, renderDnsmasq(this.ap, { leaseFile: p.leases }), { mode: 0o600 });
      // The fence goes up before the address: no packet from the AP side is ever forwarded
      // but what `ap.forward` lists.
      await this.run(["nft", "-f"], renderNft(this.ap, this.uplinks));
      const fwd = `/proc/sys/net/ipv4/conf/${ifname}/forwarding`;
      try {
        this.savedForwarding = readFileSync(fwd, "utf8").trim();
        // Kept on disk too: a killed agent's successor restores it (cleanupOrphans).
        writeFileAtomic(p.savedForwarding, this.savedForwarding + "\n", { mode: 0o600 });
        // IPv4 forwarding is decided by the interface a packet came in on: off unless
        // `ap.forward` asks for it (the fence then still limits where to).
        writeFileSync(fwd, this.ap.forward.length > 0 ? "1" : "0");
      } catch (e) {
        throw new Error(`AP interface ${ifname} not found (${fwd}: ${(e as Error).message})`);
      }
      await this.run(["ip", "addr", "flush", "dev", ifname]);
      await this.run(["ip", "addr", "add", addr, "dev", ifname]);
      await this.run(["ip", "link", "set", ifname, "up"]);
      this.hostapd = new Supervisor({ name: "hostapd", argv: a.hostapd, pidFile: p.hostapdPid, log: this.log });
      this.dnsmasq = new Supervisor({ name: "dnsmasq", argv: a.dnsmasq, pidFile: p.dnsmasqPid, log: this.log });
      await this.hostapd.start();
      await this.dnsmasq.start();
      this.since = this.clock.wall();
      this.lastError = undefined;
      this.log.info(`access point ${JSON.stringify(this.ap.ssid)} up on ${ifname} (${addr})`);
    } catch (e) {
      this.lastError = (e as Error).message;
      await this.teardown();
      throw new Error(`access point on ${ifname} did not start`, { cause: e });
    }
  }

  private async teardown(): Promise<void> {
    await this.dnsmasq?.stop();
    await this.hostapd?.stop();
    this.dnsmasq = this.hostapd = undefined;
    const ifname = this.ap.interface;
    await this.exec(["ip", "addr", "del", `${formatIPv4(this.ap.address.host)}/${this.ap.address.prefix}`, "dev", ifname]);
    await this.exec(["nft", "delete", "table", "inet", NFT_TABLE]);
    if (this.savedForwarding !== undefined) {
      try {
        writeFileSync(`/proc/sys/net/ipv4/conf/${ifname}/forwarding`, this.savedForwarding);
      } catch {
        // interface gone
      }
      this.savedForwarding = undefined;
      rmSync(this.paths.savedForwarding, { force: true });
    }
  }

  /** Idempotent. */
  async stop(): Promise<void> {
    if (!this.running && !this.hostapd && !this.dnsmasq) return;
    this.since = undefined;
    await this.teardown();
    this.log.info(`access point on ${this.ap.interface} down`);
  }

  status(): ApStatus {
    return {
      running: this.running,
      since: this.since === undefined ? undefined : new Date(this.since).toISOString(),
      interface: this.ap.interface,
      ssid: this.ap.ssid,
      address: `${formatIPv4(this.ap.address.host)}/${this.ap.address.prefix}`,
      security: this.ap.security === "sae" ? "WPA3-SAE" : "WPA2-PSK",
      hostapd: this.hostapd?.status(),
      dnsmasq: this.dnsmasq?.status(),
      error: this.lastError,
    };
  }
}
