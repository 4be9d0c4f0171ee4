// Freezes the wire vocabulary: frame types, flags, reset and goaway codes and the control
// message catalogue. A change here breaks devices in the field running the previous version:
// only add new ids, never renumber (docs/protocol.md says the same).
import { expect, test } from "bun:test";
import { Flag, FrameType, GoAwayCode, ResetCode, FRAME_VERSION, HEADER_SIZE, MAX_PAYLOAD } from "../src/transport/frame.ts";
import { ErrorCode, Msg, PROTOCOL_VERSIONS, isKnownMsg, msgName } from "../src/transport/messages.ts";

test("frame format constants", () => {
  expect(FRAME_VERSION).toBe(1);
  expect(HEADER_SIZE).toBe(12);
  expect(MAX_PAYLOAD).toBe(65536);
  expect(PROTOCOL_VERSIONS).toEqual([1]);
});

test("frame type ids are frozen", () => {
  expect({ ...FrameType }).toEqual({ DATA: 0, WINDOW: 1, PING: 2, GOAWAY: 3, RESET: 4, CONTROL: 5 });
});

test("flag bits are frozen", () => {
  expect({ ...Flag }).toEqual({ SYN: 1, ACK: 2, FIN: 4, MORE: 8 });
});

test("reset codes are frozen", () => {
  expect({ ...ResetCode }).toEqual({ CANCEL: 0, REFUSED: 1, UNREACHABLE: 2, PROTOCOL: 3, NO_SESSION: 4, INTERNAL: 5 });
});

test("goaway codes are frozen", () => {
  expect({ ...GoAwayCode }).toEqual({ NORMAL: 0, PROTOCOL: 1, REPLACED: 2, REVOKED: 3, KEEPALIVE: 4, SHUTDOWN: 5, INTERNAL: 6 });
});

test("control message ids are frozen", () => {
  expect({ ...Msg }).toEqual({
    HELLO: 1,
    WELCOME: 2,
    REPLY: 3,
    INVENTORY: 10,
    DEVICES: 11,
    SESSION_OPEN: 20,
    SESSION_OFFER: 21,
    SESSION_CLOSE: 22,
    SESSIONS: 23,
    SESSION_END: 24,
    NAT_REQUEST: 30,
  });
});

test("reply error codes are frozen (a CLI maps them to messages)", () => {
  expect({ ...ErrorCode }).toEqual({
    BAD_REQUEST: "bad_request",
    UNKNOWN_DEVICE: "unknown_device",
    OFFLINE: "offline",
    FORBIDDEN: "forbidden",
    REFUSED: "refused",
    NO_SESSION: "no_session",
    VERSION: "version",
    INTERNAL: "internal",
  });
});

test.each([
  ["FrameType", FrameType as Record<string, number>, 0xff],
  ["ResetCode", ResetCode as Record<string, number>, 0xffffffff],
  ["GoAwayCode", GoAwayCode as Record<string, number>, 0xffffffff],
  ["Msg", Msg as Record<string, number>, 0xffff],
])("%s ids are unique and fit their wire field", (_name, table, max) => {
  const ids = Object.values(table);
  expect(new Set(ids).size).toBe(ids.length);
  for (const id of ids) {
    expect(Number.isInteger(id)).toBe(true);
    expect(id).toBeGreaterThanOrEqual(0);
    expect(id).toBeLessThanOrEqual(max);
  }
});

test("the catalogue lookup knows exactly the listed messages", () => {
  for (const [name, id] of Object.entries(Msg)) {
    expect(isKnownMsg(id)).toBe(true);
    expect(msgName(id)).toBe(name);
  }
  const known = new Set<number>(Object.values(Msg));
  for (let id = 0; id <= 0xffff; id++) if (!known.has(id)) expect(isKnownMsg(id)).toBe(false);
  expect(msgName(999)).toBe("#999");
});

test("docs/protocol.md documents every frame type, message and error code with its id", async () => {
  const doc = await Bun.file(new URL("../docs/protocol.md", import.meta.url)).text();
  for (const [name, id] of Object.entries(FrameType)) expect(doc).toMatch(new RegExp(`\\|\\s*${id}\\s*\\|\\s*${name}\\s*\\|`));
  for (const [name, id] of Object.entries(Msg)) expect(doc).toMatch(new RegExp(`\\|\\s*${id}\\s*\\|\\s*${name}\\s*\\|`));
  for (const [name, id] of Object.entries(ResetCode)) expect(doc).toContain(`${id} ${name}`);
  for (const [name, id] of Object.entries(GoAwayCode)) expect(doc).toContain(`${id} ${name}`);
  for (const [name, bit] of Object.entries(Flag)) expect(doc).toContain(`\`${name} = ${bit}\``);
  for (const code of Object.values(ErrorCode)) expect(doc).toContain(`\`${code}\``);
});
