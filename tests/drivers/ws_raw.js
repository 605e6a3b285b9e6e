// WebSockets that no driver opens: garbage, a text frame, silence, a startup message and no
// password. Each must be closed by the Gateway (a timeout for the silent ones).
//
// node ws_raw.js WSS_URL MODE...   (MODE: garbage | text | silent | no-password | over-limit:
// a second socket while a first is open)
// Prints one JSON line: for each mode, how the socket ended and after how many ms.
const WebSocket = require("ws");

const [url, ...modes] = process.argv.slice(2);

// A PostgreSQL startup message (protocol 3.0) for user "nobody".
function startup() {
  const params = Buffer.from("user\0nobody\0database\0nowhere\0\0");
  const b = Buffer.alloc(8 + params.length);
  b.writeInt32BE(b.length, 0);
  b.writeInt32BE(196608, 4);
  params.copy(b, 8);
  return b;
}

function run(mode) {
  return new Promise((resolve) => {
    const began = Date.now();
    const ws = new WebSocket(url);
    const said = [];
    const done = (how) => {
      resolve({ how, ms: Date.now() - began, said });
      try {
        ws.terminate();
      } catch (_) {}
    };
    ws.on("unexpected-response", (_req, res) => done(`http ${res.statusCode}`));
    ws.on("error", (e) => done(`error ${e.message}`));
    ws.on("close", (code) => done(`closed ${code}`));
    ws.on("message", (data) => said.push(String.fromCharCode(data[0])));
    ws.on("open", () => {
      if (mode === "garbage") ws.send(Buffer.from("GET / HTTP/1.1 this is no startup packet\r\n"));
      if (mode === "text") ws.send("SELECT 1");
      if (mode === "no-password") ws.send(startup());
      // silent: nothing at all.
    });
    setTimeout(() => done("still open"), 30000);
  });
}

(async () => {
  const out = {};
  for (const mode of modes) {
    if (mode === "over-limit") {
      const first = new WebSocket(url);
      await new Promise((resolve) => first.on("open", resolve));
      out[mode] = await run("silent");
      first.terminate();
    } else {
      out[mode] = await run(mode);
    }
  }
  console.log(JSON.stringify(out));
  process.exit(0);
})();
