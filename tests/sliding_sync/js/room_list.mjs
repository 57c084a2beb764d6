// matrix-js-sdk (npm) driving its simplified sliding sync support (SlidingSync + startClient) headless
// in Node, against the homeserver named in the config (argv[2], JSON), started by
// tests/sliding_sync/test_js_sdk.py. Talks to the test over stdout, one JSON object per line:
//   {"step": "ready", "order": [...room IDs...], "rooms": {id: {name, last}}, "device_id": ...}
//   {"step": "message", "room_id", "sender", "body", "encrypted"}   for each message that arrives
//   {"step": "error", "error": "..."}
// and exits when the test closes its stdin (or after config.timeout_ms).

import * as sdk from "matrix-js-sdk";
import { SlidingSync, SlidingSyncEvent } from "matrix-js-sdk/lib/sliding-sync.js";

// matrix-js-sdk 43 targets Node 22; Node 20 lacks Promise.withResolvers (its only gap here).
if (!Promise.withResolvers) {
  Promise.withResolvers = function () {
    let resolve, reject;
    const promise = new Promise((a, b) => { resolve = a; reject = b; });
    return { promise, resolve, reject };
  };
}

const config = JSON.parse(process.argv[2]);
// Marked lines: the SDK logs to the console too.
const out = (obj) => process.stdout.write("@@ss " + JSON.stringify(obj) + "\n");
const quietLogger = { trace() {}, debug() {}, info() {}, warn() {}, error() {}, getChild() { return quietLogger; } };

const client = sdk.createClient({
  baseUrl: config.base_url,
  accessToken: config.access_token,
  userId: config.user_id,
  deviceId: config.device_id,
  logger: quietLogger,
});
if (config.crypto) {
  await client.initRustCrypto({ useIndexedDB: false });
}

const lists = new Map([["all", {
  ranges: [[0, 19]],
  timeline_limit: 1,
  required_state: [["m.room.name", ""], ["m.room.encryption", ""], ["m.room.member", "$LAZY"], ["m.room.member", "$ME"],
                   ["m.room.create", ""]],
}]]);
const subscription = { timeline_limit: 20, required_state: [["*", "*"]] };
const slidingSync = new SlidingSync(config.base_url, lists, subscription, client, config.poll_ms ?? 10000);

let ready = false;
const seen = new Set();
function report(event, room) {
  if (!ready || seen.has(event.getId())) return;
  if (event.getType() !== "m.room.message") return;
  seen.add(event.getId());
  out({ step: "message", room_id: room.roomId, sender: event.getSender(), body: event.getContent().body ?? null,
        encrypted: event.isEncrypted() });
}
client.on(sdk.RoomEvent.Timeline, (event, room) => {
  if (event.isBeingDecrypted() || event.shouldAttemptDecryption()) {
    event.once(sdk.MatrixEventEvent.Decrypted, () => report(event, room));
    return;
  }
  report(event, room);
});

slidingSync.on(SlidingSyncEvent.Lifecycle, async (state, resp, err) => {
  if (err) out({ step: "error", error: String(err) });
  if (ready || state !== "COMPLETE" || !resp) return;
  const data = slidingSync.getListData("all");
  if (!data || data.joinedCount < config.expect_rooms || client.getRooms().length < config.expect_rooms) return;
  ready = true;
  // js-sdk 43's lists keep only the count; the room list is the client's rooms ordered by the
  // server's bump_stamp, most recent first, as Element Web's room list does.
  const order = client.getRooms().slice().sort((a, b) => (b.getBumpStamp() ?? 0) - (a.getBumpStamp() ?? 0))
    .map((room) => room.roomId);
  const rooms = {};
  for (const roomId of order) {
    const room = client.getRoom(roomId);
    const messages = room ? room.getLiveTimeline().getEvents().filter((e) => e.getType() === "m.room.message") : [];
    rooms[roomId] = { name: room ? room.name : null, last: messages.length ? messages.at(-1).getContent().body : null,
                      encrypted: room ? client.isRoomEncrypted?.(roomId) ?? null : null };
  }
  if (config.crypto) {
    // Let the crypto layer upload this device's keys before the test sends it anything encrypted.
    const crypto = client.getCrypto();
    for (let i = 0; i < 50; i++) {
      const keys = await client.http.authedRequest("POST", "/keys/query", undefined,
        { device_keys: { [config.user_id]: [config.device_id] } });
      if (keys.device_keys?.[config.user_id]?.[config.device_id]) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    rooms.__crypto = { device_keys: !!(await crypto.getOwnDeviceKeys()) };
  }
  out({ step: "ready", order, rooms, count: data.joinedCount });
});

await client.startClient({ slidingSync });

const timer = setTimeout(() => { out({ step: "error", error: "timeout" }); process.exit(2); }, config.timeout_ms ?? 30000);
process.stdin.on("end", () => { clearTimeout(timer); client.stopClient(); process.exit(0); });
process.stdin.resume();
