// A program using the TypeScript stub of tests/apps/typed.py: tests/test_stubs.py compiles it with
// `tsc --strict` and runs it on Node. `node usage.js URL native|jsonrpc [TOKEN]` calls every function
// through the stub and prints one JSON object of what came back.
import WebSocket from "ws";
import { API, RPCError, type Point, type Shape } from "./typed_stub.js";

const [url, dialect, token] = process.argv.slice(2);
const shape: Shape = { points: [{ x: 1, y: 2 }, { x: 3 }], color: "green", children: [{ points: [] }] };
const api = await API.connect(url, { WebSocket, token, dialect: dialect === "jsonrpc" ? "jsonrpc" : "native" });
const centre: Point = await api.centroid(shape, 2);
const walked: Point[] = [];
for await (const point of api.walk(shape, 1)) walked.push(point);
const xs: number[] = [];
for await (const point of api.walk(shape)) xs.push(point.x);
const repeated: string[] = [];
for await (const text of api.repeat("ab", 3)) repeated.push(text);
const first: Point[] = [];
for await (const point of api.walk({ points: [{ x: 7 }, { x: 8 }, { x: 9 }] })) {
  first.push(point);
  break; // stops the stream on the server; the connection goes on
}
let refused: number | null = null;
try {
  // @ts-expect-error: x must be a number (tsc fails here if the stub did not say so)
  await api.count_shapes({ points: [{ x: "far" }] });
} catch (error) {
  refused = error instanceof RPCError ? error.code : -1;
}
const results = {
  centroid: centre,
  count: await api.count_shapes(shape),
  walk: walked,
  xs,
  join: await api.text_join(["a", "b"], "-"),
  join_default: await api.text_join(["a", "b"]),
  tagged: await api.tagged(1, "two"),
  repeat: repeated,
  first,
  pair: await api.pair(1, "x"),
  nothing: await api.nothing(), // null: what a function returning None answers
  refused,
};
api.close();
const sorted = (value: unknown): unknown =>
  Array.isArray(value)
    ? value.map(sorted)
    : typeof value === "object" && value !== null
      ? Object.fromEntries(Object.entries(value).sort(([a], [b]) => (a < b ? -1 : 1)).map(([k, v]) => [k, sorted(v)]))
      : value;
console.log(JSON.stringify(sorted(results)));
