// A small bridge built with matrix-appservice-bridge (npm), started by
// tests/clients/test_appservice_bridge_js.py with a JSON config in argv[2]:
//   {"base_url", "domain", "registration" (path of the YAML the homeserver loaded too), "port",
//    "puppet" (a user ID in the service's namespace), "expect_body", "timeout_ms"}
// It listens for transactions on 127.0.0.1:port; its bot joins the first room it is invited to (through
// the bridge's Intent) and waits for a message whose body is expect_body; then the bot invites the
// puppet, whose Intent registers it (lazily, m.login.application_service), joins and sends a message.
// Talks to the test over stdout, one JSON object per marked line:
//   {"step": "listening"}   the transaction listener is up and the bot is registered
//   {"step": "done", ...}   what happened; then the script exits
//   {"step": "error", "error": "..."}

import { createRequire } from "node:module";

// @vector-im/matrix-bot-sdk (the bridge's Matrix client) loads the Rust crypto's native binding when it
// is imported, and that binding arrives only through a postinstall script downloading it from GitHub,
// which npm here does not run. This bridge does no encryption, so an empty module stands in for it:
// any crypto call would fail loudly, none is made.
const require = createRequire(import.meta.url);
const cryptoPath = require.resolve("@matrix-org/matrix-sdk-crypto-nodejs");
require.cache[cryptoPath] = { id: cryptoPath, filename: cryptoPath, loaded: true, exports: {} };
const { Bridge, Logger } = await import("matrix-appservice-bridge");

const config = JSON.parse(process.argv[2]);
const out = (obj) => process.stdout.write("@@as " + JSON.stringify(obj) + "\n");
const fail = (err) => {
  out({ step: "error", error: String(err?.stack ?? err) });
  process.exit(1);
};
process.on("unhandledRejection", fail);
setTimeout(() => fail(new Error(`timed out after ${config.timeout_ms} ms`)), config.timeout_ms).unref();
Logger.configure({ console: "warn" });

const result = { invites: [], bot_joined: null, received: [], puppet: null };
let roomId = null;
let puppetStarted = false;

async function runPuppet(room) {
  // The bot (a room member) invites the puppet; the puppet's Intent registers the user on first use.
  await bridge.getIntent().invite(room, config.puppet);
  const intent = bridge.getIntent(config.puppet);
  await intent.join(room);
  const sent = await intent.sendText(room, "hello from the js puppet");
  const profile = await intent.matrixClient.getUserProfile(config.puppet).catch((e) => ({ error: String(e) }));
  result.puppet = { user_id: config.puppet, event_id: sent.event_id, whoami: await intent.matrixClient.getUserId(),
                    profile };
  out({ step: "done", ...result });
  await bridge.close().catch(() => {});
  process.exit(0);
}

const bridge = new Bridge({
  homeserverUrl: config.base_url,
  domain: config.domain,
  registration: config.registration,
  disableStores: true,
  disableContext: true,
  controller: {
    onEvent: async (request) => {
      const event = request.getData();
      const botId = bridge.getBot().getUserId();
      if (event.type === "m.room.member" && event.state_key === botId && event.content.membership === "invite") {
        result.invites.push({ room_id: event.room_id, sender: event.sender });
        if (roomId === null) {
          roomId = event.room_id;
          await bridge.getIntent().join(roomId);
          result.bot_joined = roomId;
          out({ step: "joined", room_id: roomId });
        }
      } else if (event.type === "m.room.message" && event.room_id === roomId) {
        result.received.push({ sender: event.sender, body: event.content.body, event_id: event.event_id });
        if (event.content.body === config.expect_body && !puppetStarted) {
          puppetStarted = true;
          runPuppet(roomId).catch(fail);
        }
      }
    },
  },
});

try {
  await bridge.run(config.port, undefined, "127.0.0.1");
  await bridge.getIntent().ensureRegistered();
  out({ step: "listening", bot: bridge.getBot().getUserId() });
} catch (e) {
  fail(e);
}
