// The event bus of a daemon: what `agent monitor` streams. Parts publish what happens as it
// happens (a device connects, a session ends, a refusal, a heartbeat, an uplink switch); the
// control socket's `monitor` stream subscribes. Injected like the log (an `Events` handle), so a
// part only knows `publish`, and tests hand in a bus of their own and read what was published.
//
// An event is one flat JSON object: `time` (wall clock, ISO), `type` (from EVENT_TYPES; only
// add), and the fields of that type. Publishing never throws and never waits: a subscriber that
// fails is dropped from the bus, one that is slow is the subscriber's business (the control
// socket bounds what it queues per client and says how many events it dropped).
import { systemClock, type Clock } from "./clock.ts";

/** Only add: scripts reading `agent monitor --json` key on these. */
export const EVENT_TYPES = [
  "connect", // a device or master passed its HELLO (relay)
  "disconnect", // ... and is gone (relay), with the reason
  "session_open", // a session became active (relay)
  "session_close", // a session ended, with the reason both sides heard (relay)
  "refusal", // a connection or request refused, with the code and reason (relay)
  "kick", // `agent kick` closed a connection (relay)
  "heartbeat", // a heartbeat datagram arrived or was rejected (relay; fed by the heartbeat receiver)
  "uplink", // the active uplink switched (onsite)
  "relay_up", // this device's relay connection came up (onsite, master)
  "relay_down", // ... and went down, with the reason (onsite, master)
  "dropped", // the monitor stream itself: N events were not delivered to a slow reader
  // issue 15 (what the GUI's live pages follow); the master also publishes session_open and
  // session_close for its own sessions ({session, onsite, state, expires, reason?}).
  "session_mode", // a session's tunnel switched between routed and bridged: {session, onsite, mode} (relay, master)
  "session_extend", // a session's end moved: {session, onsite, expires} (relay, master)
  "device_state", // a device's state changed: {id, state, previous, status} (relay: online, alive, lost, offline)
  "nat_grant", // a master's timed-access grant was added on a device: {id, onsite, session, port, to, src, expires} (master)
  "nat_revoke", // ... and revoked early: {id, onsite, session} (master)
] as const;
export type EventType = (typeof EVENT_TYPES)[number];

export interface AgentEvent {
  time: string;
  type: EventType;
  [field: string]: unknown;
}

export interface Events {
  publish(type: EventType, fields?: Record<string, unknown>): void;
}

/** A bus that goes nowhere: the default of a part that was given none. */
export const noEvents: Events = { publish() {} };

export class EventBus implements Events {
  private readonly subscribers = new Set<(e: AgentEvent) => void>();

  constructor(private readonly clock: Clock = systemClock) {}

  /** `fn` gets every event from now on, until the returned function is called. */
  subscribe(fn: (e: AgentEvent) => void): () => void {
    this.subscribers.add(fn);
    return () => void this.subscribers.delete(fn);
  }

  get subscriberCount(): number {
    return this.subscribers.size;
  }

  publish(type: EventType, fields: Record<string, unknown> = {}): void {
    if (this.subscribers.size === 0) return;
    const e: AgentEvent = { ...fields, time: new Date(this.clock.wall()).toISOString(), type };
    for (const fn of [...this.subscribers]) {
      try {
        fn(e);
      } catch {
        this.subscribers.delete(fn);
      }
    }
  }
}

/** The filter of `agent monitor --type T,...`: the types named, or every type. Pure. */
export function parseEventTypes(text: string | undefined): EventType[] | null {
  if (text === undefined || text.trim() === "") return null;
  const out: EventType[] = [];
  for (const t of text.split(",").map((s) => s.trim())) {
    if (!(EVENT_TYPES as readonly string[]).includes(t)) throw new Error(`unknown event type ${JSON.stringify(t)}; the types are ${EVENT_TYPES.join(", ")}`);
    out.push(t as EventType);
  }
  return out;
}
