// The relay's heart, in parts under ./relay/: the connection front (admission, HELLO deadline,
// refusals), the inventory of onsite devices, the session table (a pure state machine), the
// stream router (id rewriting, per-stream credit) and the refusal log, composed by RelayServer.
// This module keeps the import path callers have always used.
export { RelayServer, type RelayOptions, type Session } from "./relay/server.ts";
export { RefusalCode, MemoryRefusalLog, FileRefusalLog, tlsRefusalCode, type Refusal, type RefusalCodeId, type RefusalLog } from "./relay/refusals.ts";
export { Admission, judgeHello, type PeerCert } from "./relay/front.ts";
export { Inventory } from "./relay/inventory.ts";
export { SessionTable, nextState, sessionInfo } from "./relay/sessions.ts";
