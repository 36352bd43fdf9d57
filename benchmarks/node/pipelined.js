// Independent pipelined generator: CONNECTIONS sockets, WINDOW calls in flight on each, for SECONDS.
// BODY_JSON is the request (default {"func": "add_numbers", "args": [1, 2]}); each call gets the next id of its
// connection, 1, 2, 3, ..., as a JSON number or, with ID_STYLE "string", as a string ("1", "2", ...). The id
// keeps its place when BODY_JSON has an "id" key (the seed's {"id": "17", "op": "call", ...}), else comes last.
// A reply counts as an error when it has an error, no result, or an id of the other type than the one sent.
// Prints {"measuring": true} when the warm-up is over, then one JSON line: {"calls": N, "seconds": S, "calls_per_s": R, "errors": E, "first_error": ...,
// "cpu": C} where C is this process's CPU time over the measured seconds (near 1.0: the generator is the limit).
// usage: node pipelined.js URL [CONNECTIONS=8] [WINDOW=16] [SECONDS=5] [BODY_JSON] [ID_STYLE=number|string]
"use strict";
const WebSocket = require("ws");

const [url, connections = "8", windowSize = "16", seconds = "5", body = "", idStyle = "number"] =
  process.argv.slice(2);
if (idStyle !== "number" && idStyle !== "string") {
  console.error(`node generator: ID_STYLE must be number or string, not ${idStyle}`);
  process.exit(2);
}
const request = body ? JSON.parse(body) : { func: "add_numbers", args: [1, 2] };
// The request's text is built once around a placeholder id: each call only concatenates its id.
const placeholder = JSON.stringify("\u0000id\u0000");
const [prefix, suffix] = JSON.stringify({ ...request, id: "\u0000id\u0000" }).split(placeholder);
const stringIds = idStyle === "string";
const encode = stringIds ? (id) => `${prefix}"${id}"${suffix}` : (id) => `${prefix}${id}${suffix}`;
const idType = stringIds ? "string" : "number";
let done = 0;
let errors = 0;
let firstError = null;
let measuring = false;
let open = 0;

function start(ws) {
  let nextId = 0;
  const send = () => ws.send(encode(++nextId));
  ws.on("message", (data) => {
    const reply = JSON.parse(data);
    if (measuring) {
      done += 1;
      if (reply.error || reply.result === undefined || typeof reply.id !== idType) {
        errors += 1;
        firstError ??= String(data).slice(0, 300);
      }
    }
    send();
  });
  for (let i = 0; i < Number(windowSize); i++) send();
}

function measure() {
  console.log(JSON.stringify({ measuring: true })); // servers.py reads the server's CPU time from here on
  measuring = true;
  const began = process.hrtime.bigint();
  const cpuBefore = process.cpuUsage();
  setTimeout(() => {
    const elapsed = Number(process.hrtime.bigint() - began) / 1e9;
    const cpu = process.cpuUsage(cpuBefore);
    const result = { calls: done, seconds: elapsed, calls_per_s: done / elapsed, errors, first_error: firstError };
    console.log(JSON.stringify({ ...result, cpu: (cpu.user + cpu.system) / 1e6 / elapsed }));
    process.exit(0);
  }, Number(seconds) * 1000);
}

for (let i = 0; i < Number(connections); i++) {
  const ws = new WebSocket(url, { perMessageDeflate: false });
  ws.on("open", () => {
    start(ws);
    if (++open === Number(connections)) setTimeout(measure, 1000); // warm-up
  });
  ws.on("error", (err) => {
    console.error(`node generator: ${err.message}`);
    process.exit(3);
  });
}
