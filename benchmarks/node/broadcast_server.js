// Reference fan-out server: npm ws broadcasting in a loop, the way ws's README broadcasts to every other client.
// The convention of benchmarks/fanout.py's bare broadcast servers (this one and reference/broadcast_websockets.py):
// every connection is a subscriber until it sends a text frame; that connection is then the publisher, and each
// text frame it sends is sent as is to every connection that never sent one.
// usage: node broadcast_server.js PORT
"use strict";
const { WebSocketServer, WebSocket } = require("ws");

const port = Number(process.argv[2]);
// backlog: 10,000 subscribers connect 100 at a time per generator process (Node's default is 511)
const server = new WebSocketServer({ host: "127.0.0.1", port, perMessageDeflate: false, backlog: 2048 });
const publishers = new Set();
server.on("connection", (ws) => {
  ws.on("message", (data, isBinary) => {
    publishers.add(ws);
    server.clients.forEach((client) => {
      if (!publishers.has(client) && client.readyState === WebSocket.OPEN) {
        client.send(data, { binary: isBinary });
      }
    });
  });
  ws.on("close", () => publishers.delete(ws));
  ws.on("error", () => {});
});
server.on("error", (err) => {
  console.error(`ws broadcast server: ${err.message}`);
  process.exit(3);
});
