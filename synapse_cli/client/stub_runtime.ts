// ---- The connection, calls and streams: the same in every stub `synapse stubs --typescript` writes. ----
// Standard ECMAScript only (no DOM or Node types needed): the WebSocket class is the browser's, Node 22's
// global one, or any class with the same API (the `ws` package's) given as `options.WebSocket`.

/** The server answered a call with an error (`code`, `message`, `data`: SPEC error codes). */
export class RPCError extends Error {
  readonly code: number;
  readonly data: unknown;
  constructor(message: string, code: number, data?: unknown) {
    super(message);
    this.name = "RPCError";
    this.code = code;
    this.data = data;
  }
}

/** The connection could not be opened (refused, rejected handshake: a wrong token, an origin, a limit). */
export class ConnectError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ConnectError";
  }
}

/** The connection closed while a call waited for its reply (the call is not sent again). */
export class ConnectionLost extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ConnectionLost";
  }
}

/** No reply within the timeout (a native `cancel` was sent for the call). */
export class CallTimeout extends Error {
  constructor(message: string) {
    super(message);
    this.name = "CallTimeout";
  }
}

/** A class with the WebSocket API: `new (url, protocols)`, `send`, `close`, `onopen`/`onmessage`/`onclose`/`onerror`. */
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => unknown;

export interface ConnectOptions {
  /** The server's bearer token, offered as the `bearer.<base64url(token)>` subprotocol (browsers cannot set headers). */
  token?: string;
  /** Seconds to wait for the connection and for each reply (default 10; 0 waits forever). Streams have none. */
  timeout?: number;
  /** `"native"` (synapse's own protocol, the default) or `"jsonrpc"` (JSON-RPC 2.0). */
  dialect?: "native" | "jsonrpc";
  /** The WebSocket class (default: `globalThis.WebSocket`; on Node 20, pass the `ws` package's). */
  WebSocket?: WebSocketConstructor;
  /** Called with each notification the server sends this connection (`ctx.notify(method, params)`). */
  onNotification?: (method: string, params: unknown) => void;
}

interface Socket {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
}

interface Timers {
  setTimeout(callback: () => void, milliseconds: number): unknown;
  clearTimeout(handle: unknown): void;
  btoa(text: string): string;
  WebSocket?: WebSocketConstructor;
}

const platform = globalThis as unknown as Timers;
const OPEN = 1;
const SUBPROTOCOL = "synapse.v1";

type Message = { [key: string]: unknown };

interface Waiting {
  resolve(value: unknown): void;
  reject(error: Error): void;
  timer: unknown;
}

/** The items of one stream call, as they arrive: `for await (const item of stream)`; `break` stops it on the server. */
export class Stream<T> implements AsyncIterableIterator<T> {
  private readonly items: T[] = [];
  private ended = false;
  private error: Error | null = null;
  private wake: (() => void) | null = null;

  /** @internal made by the connection; `stop` tells the server to stop the stream. */
  constructor(private readonly stop: () => void) {}

  /** @internal */
  push(item: T): void {
    this.items.push(item);
    this.notify();
  }

  /** @internal */
  end(error: Error | null): void {
    if (!this.ended) {
      this.ended = true;
      this.error = error;
      this.notify();
    }
  }

  async next(): Promise<IteratorResult<T, undefined>> {
    while (this.items.length === 0) {
      if (this.ended) {
        if (this.error !== null) throw this.error;
        return { done: true, value: undefined };
      }
      await new Promise<void>((resolve) => {
        this.wake = resolve;
      });
    }
    return { done: false, value: this.items.shift() as T };
  }

  async return(): Promise<IteratorResult<T, undefined>> {
    if (!this.ended) {
      this.ended = true;
      this.stop();
    }
    this.items.length = 0;
    return { done: true, value: undefined };
  }

  [Symbol.asyncIterator](): Stream<T> {
    return this;
  }

  private notify(): void {
    const wake = this.wake;
    this.wake = null;
    if (wake !== null) wake();
  }
}

/** One WebSocket to a synapse (or JSON-RPC 2.0) server: calls routed by id, streams, timeouts. */
export class Connection {
  readonly opened: Promise<void>;
  private readonly socket: Socket;
  private readonly timeout: number;
  private readonly jsonrpc: boolean;
  private nextId = 1;
  private lost: string | null = null;
  private readonly waiting = new Map<number, Waiting>();
  private readonly streams = new Map<number, Stream<unknown>>(); // by request id
  private readonly subscriptions = new Map<string, Stream<unknown>>(); // JSON-RPC: by subscription id
  private readonly subscribing = new Map<number, Stream<unknown>>(); // JSON-RPC: waiting for the subscription id

  constructor(
    readonly url: string,
    private readonly options: ConnectOptions = {},
  ) {
    const WebSocketClass = options.WebSocket ?? platform.WebSocket;
    if (WebSocketClass === undefined) {
      throw new ConnectError("no WebSocket class here: pass one as options.WebSocket (the ws package on Node 20)");
    }
    this.timeout = options.timeout ?? 10;
    this.jsonrpc = options.dialect === "jsonrpc";
    const protocols = options.token === undefined ? [] : [SUBPROTOCOL, "bearer." + base64url(options.token)];
    this.socket = new WebSocketClass(url, protocols) as Socket;
    this.opened = new Promise<void>((resolve, reject) => {
      const timer = this.timeout > 0 ? platform.setTimeout(() => {
        reject(new ConnectError(`no connection to ${url} within ${this.timeout} s`));
        this.socket.close();
      }, this.timeout * 1000) : undefined;
      this.socket.onopen = () => {
        platform.clearTimeout(timer);
        resolve();
      };
      this.socket.onerror = () => {
        platform.clearTimeout(timer);
        reject(new ConnectError(`cannot connect to ${url} (refused, or the handshake was rejected)`));
      };
    });
    this.opened.catch(() => undefined); // awaited by connect(); never an unhandled rejection
    this.socket.onmessage = (event) => this.receive(event.data);
    this.socket.onclose = (event) => this.closed(`connection closed (${event.code}${event.reason ? " " + event.reason : ""})`);
  }

  /** Call `func` with its arguments by name; the promise settles with the result or an error. */
  call(func: string, params: object): Promise<unknown> {
    const id = this.nextId++;
    return new Promise<unknown>((resolve, reject) => {
      if (!this.send(this.request(id, func, params), reject)) return;
      const timer = this.timeout > 0 ? platform.setTimeout(() => this.expire(id, func), this.timeout * 1000) : undefined;
      this.waiting.set(id, { resolve, reject, timer });
    });
  }

  /** Call the stream function `func`; its items arrive on the returned stream. */
  stream<T>(func: string, params: object): Stream<T> {
    const id = this.nextId++;
    const stream = new Stream<T>(() => this.stopStream(id, stream as Stream<unknown>));
    (this.jsonrpc ? this.subscribing : this.streams).set(id, stream as Stream<unknown>);
    this.send(this.request(id, func, params), (error) => stream.end(error));
    return stream;
  }

  /** Close the connection; calls still waiting fail with ConnectionLost. */
  close(): void {
    this.socket.close(1000);
    this.closed("connection closed");
  }

  private request(id: number, func: string, params: object): string {
    return JSON.stringify(this.jsonrpc ? { jsonrpc: "2.0", id, method: func, params } : { id, func, args: params });
  }

  private send(data: string, fail: (error: Error) => void): boolean {
    if (this.lost !== null || this.socket.readyState !== OPEN) {
      fail(new ConnectionLost(this.lost ?? "the connection is not open"));
      return false;
    }
    this.socket.send(data);
    return true;
  }

  private expire(id: number, func: string): void {
    const waiting = this.waiting.get(id);
    if (waiting === undefined) return;
    this.waiting.delete(id);
    waiting.reject(new CallTimeout(`no reply to ${func} within ${this.timeout} s`));
    if (!this.jsonrpc && this.socket.readyState === OPEN) this.socket.send(JSON.stringify({ op: "cancel", id }));
  }

  private stopStream(id: number, stream: Stream<unknown>): void {
    this.streams.delete(id);
    this.subscribing.delete(id);
    for (const [subscription, open] of this.subscriptions) {
      if (open !== stream) continue;
      this.subscriptions.delete(subscription);
      if (this.socket.readyState === OPEN) {
        const request = { jsonrpc: "2.0", id: this.nextId++, method: "rpc.unsubscribe", params: [subscription] };
        this.socket.send(JSON.stringify(request));
      }
      return;
    }
    if (!this.jsonrpc && this.socket.readyState === OPEN) this.socket.send(JSON.stringify({ op: "cancel", id }));
  }

  private receive(data: unknown): void {
    let parsed: unknown;
    try {
      parsed = JSON.parse(String(data));
    } catch {
      return; // not JSON: nothing of ours
    }
    for (const message of Array.isArray(parsed) ? parsed : [parsed]) {
      if (typeof message === "object" && message !== null && !Array.isArray(message)) this.handle(message as Message);
    }
  }

  private handle(message: Message): void {
    const method = typeof message.method === "string" ? message.method : typeof message.func === "string" ? message.func : null;
    if (method !== null) return this.incoming(method, message);
    const id = message.id;
    if (typeof id !== "number") return;
    const stream = this.streams.get(id);
    if (stream !== undefined) {
      if ("item" in message) return stream.push(message.item);
      if (!("result" in message) && !("error" in message)) return; // {"id", "position"}: where a topic's subscription starts
      this.streams.delete(id);
      return stream.end(errorOf(message.error));
    }
    const subscribing = this.subscribing.get(id);
    if (subscribing !== undefined) {
      this.subscribing.delete(id);
      const result = message.result as { subscription?: unknown } | null | undefined;
      if (typeof result?.subscription === "string") this.subscriptions.set(result.subscription, subscribing);
      else subscribing.end(errorOf(message.error) ?? null);
      return;
    }
    const waiting = this.waiting.get(id);
    if (waiting === undefined) return;
    this.waiting.delete(id);
    platform.clearTimeout(waiting.timer);
    const error = errorOf(message.error);
    if (error !== null) waiting.reject(error);
    else waiting.resolve(message.result);
  }

  /** A message from the server that is not a reply: a stream's item or end, a notification, or a call to us. */
  private incoming(method: string, message: Message): void {
    const params = (message.params ?? message.args) as { subscription?: unknown; item?: unknown; error?: unknown };
    if (method === "rpc.start") return; // where a topic's subscription starts: this client does not resume
    if ((method === "rpc.item" || method === "rpc.end") && typeof params?.subscription === "string") {
      const stream = this.subscriptions.get(params.subscription);
      if (stream === undefined) return;
      if (method === "rpc.item") return stream.push(params.item);
      this.subscriptions.delete(params.subscription);
      return stream.end(errorOf(params.error));
    }
    if (message.id === undefined || message.id === null) {
      this.options.onNotification?.(method, params);
      return;
    }
    // A call from the server (ctx.call): this client exposes no functions.
    const error = { code: -32601, message: `function not found: ${method}` };
    const reply = "jsonrpc" in message ? { jsonrpc: "2.0", id: message.id, error } : { id: message.id, result: null, error };
    if (this.socket.readyState === OPEN) this.socket.send(JSON.stringify(reply));
  }

  private closed(reason: string): void {
    if (this.lost !== null) return;
    this.lost = reason;
    for (const waiting of this.waiting.values()) {
      platform.clearTimeout(waiting.timer);
      waiting.reject(new ConnectionLost(reason));
    }
    this.waiting.clear();
    for (const stream of [...this.streams.values(), ...this.subscribing.values(), ...this.subscriptions.values()]) {
      stream.end(new ConnectionLost(reason));
    }
    this.streams.clear();
    this.subscribing.clear();
    this.subscriptions.clear();
  }
}

function errorOf(error: unknown): RPCError | null {
  if (typeof error !== "object" || error === null) return null;
  const { code, message, data } = error as { code?: unknown; message?: unknown; data?: unknown };
  return new RPCError(typeof message === "string" ? message : "error", typeof code === "number" ? code : -32603, data);
}

function base64url(text: string): string {
  const utf8 = unescape(encodeURIComponent(text)); // btoa takes one byte per character
  return platform.btoa(utf8).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}
