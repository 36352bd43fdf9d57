// Independent pipelined generator: CONNECTIONS sockets, WINDOW calls in flight on each, for SECONDS.
// Prints one JSON line: {"calls": N, "seconds": S, "calls_per_s": R, "errors": E}.
// usage: node pipelined.js URL [CONNECTIONS=8] [WINDOW=16] [SECONDS=5] [BODY_JSON]
"use strict";
const WebSocket = require("ws");

const [url, connections = "8", windowSize = "16", seconds = "5", body] = process.argv.slice(2);
const request = body ? JSON.parse(body) : { func: "add_numbers", args: [1, 2] };
let done = 0;
let errors = 0;
let measuring = false;
let open = 0;

function start(ws) {
  let nextId = 0;
  const send = () => ws.send(JSON.stringify({ ...request, id: ++nextId }));
  ws.on("message", (data) => {
    const reply = JSON.parse(data);
    if (measuring) {
      done += 1;
      if (reply.error) errors += 1;
    }
    send();
  });
  for (let i = 0; i < Number(windowSize); i++) send();
}

for (let i = 0; i < Number(connections); i++) {
  const ws = new WebSocket(url, { perMessageDeflate: false });
  ws.on("open", () => {
    start(ws);
    if (++open === Number(connections)) {
      setTimeout(() => {
        measuring = true;
        const began = process.hrtime.bigint();
        setTimeout(() => {
          const elapsed = Number(process.hrtime.bigint() - began) / 1e9;
          console.log(JSON.stringify({ calls: done, seconds: elapsed, calls_per_s: done / elapsed, errors }));
          process.exit(0);
        }, Number(seconds) * 1000);
      }, 1000); // warm-up
    }
  });
  ws.on("error", (err) => {
    console.error(`node generator: ${err.message}`);
    process.exit(3);
  });
}
