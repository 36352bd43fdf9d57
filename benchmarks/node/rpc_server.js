// Reference server for JSON-RPC 2.0: npm rpc-websockets (Node, on ws), serving add_numbers and sum.
// rpc-websockets routes by the URL's path (its "namespace"): the methods are registered under /ws, the path
// synapse serves, and under / (the library's default).
// usage: node rpc_server.js PORT
"use strict";
const { Server } = require("rpc-websockets");

const port = Number(process.argv[2]);
const server = new Server({ host: "127.0.0.1", port, perMessageDeflate: false });
const addNumbers = ([a, b]) => a + b;
for (const namespace of ["/ws", "/"]) {
  server.register("add_numbers", addNumbers, namespace);
  server.register("sum", addNumbers, namespace);
}
server.on("error", (err) => {
  console.error(`rpc-websockets server: ${err.message}`);
  process.exit(3);
});
