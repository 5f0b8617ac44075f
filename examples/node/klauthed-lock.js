"use strict";
// klauthed lock from Node.js: the scripts in ../../scripts through ioredis.
//
// Leases taken here interoperate with Go services using lockredis (and with
// the Python helper) on the same Redis: same scripts (protocol 2: a FIFO line
// per key), same key names, same token format. Install with `npm ci` in this
// directory.
//
//   const Redis = require("ioredis");
//   const { LockClient } = require("./klauthed-lock");
//
//   const locks = new LockClient(new Redis(6379, "127.0.0.1"));
//   const lease = await locks.acquire("orders/42", 30000, { waitMs: 5000 });
//   if (lease === null) { /* still held by someone else after 5 s */ }
//   try {
//     // work; pass lease.fence to storage; await lease.refresh(30000) if long
//   } finally {
//     await lease.release();
//   }
//   locks.close(); // the Pub/Sub connection keeps the process alive until then
//
// Waiting (LockClient.acquire) takes a place in the key's line in Redis,
// shared with Go and Python waiters, and is served in line order: see
// LockClient.acquire.
//
// `node klauthed-lock.js worker HOST:PORT [PREFIX] [--poll]` serves the line
// protocol that the interop test (examples/interop_test.go) drives.

const crypto = require("crypto");
const fs = require("fs");
const path = require("path");
const readline = require("readline");

// Where the canonical scripts live: this file is examples/node/.
const SCRIPTS_DIR = path.resolve(__dirname, "..", "..", "scripts");

// The key prefix Go's lockredis uses by default.
const DEFAULT_PREFIX = "klauthed:";

// Bounds every backend accepts (lock.MinTTL, lock.MaxTTL, lock.MaxKeyLen).
const MIN_TTL_MS = 1;
const MAX_TTL_MS = 365 * 24 * 3600 * 1000;
const MAX_KEY_LEN = 64 << 10;

// How long a waiter's place in line lasts unless kept alive (lockredis:
// DefaultLineTTL); a waiter keeps it alive every lineTtlMs / 3.
const DEFAULT_LINE_TTL_MS = 3000;
// The shortest line TTL a waiter accepts (lockredis: 30ms): the keep-alive
// every lineTtlMs / 3 must leave room for a round trip.
const MIN_LINE_TTL_MS = 30;

function script(name) {
  // Strip the final newline so the SHA1 matches `SCRIPT LOAD "$(cat ...)"`
  // and Go's gen.<Name>SHA1: all languages share one cached script.
  return fs.readFileSync(path.join(SCRIPTS_DIR, `${name}.lua`), "utf8").replace(/\n+$/, "");
}

// newToken returns a fresh token: 128 random bits as 22 characters of
// unpadded URL-safe base64, the format of Go's lock.NewToken.
function newToken() {
  return crypto.randomBytes(16).toString("base64url");
}

// lockKeys returns [lock key, fence key] for user key `key`, exactly as
// lockredis builds them: prefix + "{" + key + "}" and that + ":fence", which
// share the hash tag {key} (one slot on Redis Cluster). A key starting with
// "}" would make the empty tag "{}", which Cluster ignores, so such a key gets
// prefix + "}{~}" + key + "}" (tag "~") instead.
function lockKeys(key, prefix = DEFAULT_PREFIX) {
  const opener = key.startsWith("}") ? "}{~}" : "{";
  const lockKey = `${prefix}${opener}${key}}`;
  return [lockKey, `${lockKey}:fence`];
}

// keyNames returns the five names the acquire and release scripts take, in
// their KEYS order: lock, fence, line, line deadlines, line args. The line's
// names append ":line", ":line:deadlines" and ":line:args" to the lock key,
// so all five share its hash tag.
function keyNames(key, prefix = DEFAULT_PREFIX) {
  const [lockKey, fenceKey] = lockKeys(key, prefix);
  return [lockKey, fenceKey, `${lockKey}:line`, `${lockKey}:line:deadlines`, `${lockKey}:line:args`];
}

function check(key, ttlMs) {
  if (typeof key !== "string" || key === "" || Buffer.byteLength(key) > MAX_KEY_LEN) {
    throw new RangeError(`klauthed: invalid key ${JSON.stringify(key)}: want 1 to ${MAX_KEY_LEN} bytes`);
  }
  if (!Number.isInteger(ttlMs) || ttlMs < MIN_TTL_MS || ttlMs > MAX_TTL_MS) {
    throw new RangeError(`klauthed: invalid ttlMs ${ttlMs}: want an integer from ${MIN_TTL_MS} to ${MAX_TTL_MS}`);
  }
}

function checkLineTtl(lineTtlMs) {
  if (!Number.isInteger(lineTtlMs) || lineTtlMs < MIN_LINE_TTL_MS || lineTtlMs > MAX_TTL_MS) {
    throw new RangeError(
      `klauthed: invalid lineTtlMs ${lineTtlMs}: want an integer from ${MIN_LINE_TTL_MS} to ${MAX_TTL_MS}`,
    );
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Lease is one acquisition of a key. `fence` grows with every acquisition of
// the key, in any language (a JS number: exact up to 2^53).
class Lease {
  constructor(client, key, lockKey, token, fence) {
    this._client = client;
    this.key = key;
    this.lockKey = lockKey;
    this.token = token;
    this.fence = fence;
  }

  // refresh sets the lease's remaining time to ttlMs. Resolves true if the
  // lease was still held; false (nothing changed) if it expired or was
  // released: the lock is lost, stop working under it.
  async refresh(ttlMs) {
    check(this.key, ttlMs);
    return (await this._client.redis.klauthedRefresh(this.lockKey, this.token, ttlMs)) === 1;
  }

  // release frees the key if this lease still holds it, handing it to the
  // head of the key's line if anyone waits. Resolves true if it did; false
  // if the lease had already ended, in which case nothing changed: a stale
  // lease never frees the next holder's lock. Safe to call twice.
  async release() {
    return this._client._releaseToken(this.key, this.token);
  }
}

// LockClient hands out leases on string keys, stored by the klauthed scripts
// in the Redis behind `redis` (an ioredis Redis). The scripts run with
// EVALSHA and fall back to EVAL on NOSCRIPT (defineCommand).
//
// With pubsub true (the default) the client subscribes, on a duplicate()
// connection of its own, to its channel prefix + "wake:" + 24 hex digits +
// "!", where release scripts publish the hand-offs to its waiters; waiters
// give the scripts the channel only while subscribed. The "!" makes it
// strict (see the constructor): use this client on one server, not on Redis
// Cluster. With pubsub false, or when the server refuses SUBSCRIBE, or while
// the subscription is down, waiters poll (see acquire). Call close() when
// done: the subscriber connection keeps the process alive.
// What the scripts ask before a hand-off to a strict channel.
const NUMSUB = "return redis.call('PUBSUB', 'NUMSUB', ARGV[1])[2]";

class LockClient {
  constructor(redis, { prefix = DEFAULT_PREFIX, pubsub = true } = {}) {
    this.redis = redis;
    this.prefix = prefix;
    this._waiters = new Map(); // token -> waiter, for acquire calls in line
    this._sub = null;
    this._subscribed = false;
    this._onSubscribed = []; // resolvers of waitSubscribed
    // The channel that this client's waiters give the scripts while it is
    // subscribed; "" when they poll only.
    this.channel = "";
    redis.defineCommand("klauthedAcquire", { numberOfKeys: 5, lua: script("acquire") });
    redis.defineCommand("klauthedRefresh", { numberOfKeys: 1, lua: script("refresh") });
    redis.defineCommand("klauthedRelease", { numberOfKeys: 5, lua: script("release") });
    redis.defineCommand("klauthedInspect", { numberOfKeys: 1, lua: script("inspect"), readOnly: true });
    if (pubsub) {
      // Strict ("!"): a release skips a waiter of this client whose channel
      // nobody hears (its process was killed) instead of handing it the
      // key (scripts/README.md, "Tokens and channels"). One server only.
      this.channel = `${prefix}wake:${crypto.randomBytes(12).toString("hex")}!`;
      this._listen();
    }
  }

  // _listen subscribes a connection of its own to this.channel, again after
  // every reconnection (ioredis's own resubscription would not tell us when
  // it is done). Each (re)subscription wakes all waiters: a hand-off may
  // have been published while nobody listened. A server or ACL that refuses
  // SUBSCRIBE leaves the waiters polling.
  _listen() {
    const sub = this.redis.duplicate({ autoResubscribe: false, lazyConnect: false });
    this._sub = sub;
    sub.on("error", () => {}); // reconnection is ioredis's; waiters poll meanwhile
    sub.on("close", () => {
      if (this._subscribed) {
        this._subscribed = false;
        this._wakeAll(); // to poll, with no channel, until it is back
      }
    });
    sub.on("ready", () => {
      sub.subscribe(this.channel).then(
        // Only once the scripts see the subscription (they ask PUBSUB NUMSUB
        // before a hand-off to a strict channel): behind a proxy that keeps
        // subscriptions away from the servers running the scripts, every
        // waiter of this client would be skipped, so it polls instead. A
        // refusal or failure counts as seen: the scripts then count every
        // waiter as hearing anyway.
        () =>
          this.redis.eval(NUMSUB, 0, this.channel).then(
            (n) => n !== 0,
            () => true,
          ).then((seen) => {
            if (!seen) return;
            this._subscribed = true;
            for (const resolve of this._onSubscribed.splice(0)) resolve(true);
            this._wakeAll();
          }),
        (e) => {
          if (e && e.name === "ReplyError") sub.disconnect(); // refused: poll instead
        },
      );
    });
    sub.on("message", (channel, message) => {
      // "fence ttl token": wake the token's waiter, whose next attempt
      // returns the lease.
      const parts = message.split(" ");
      if (channel === this.channel && parts.length === 3) this._wake(parts[2]);
    });
  }

  // close disconnects the Pub/Sub connection. Waiters still in acquire poll.
  close() {
    if (this._sub) this._sub.disconnect();
    this._sub = null;
    this._subscribed = false;
    this._wakeAll(); // to poll, with no channel
  }

  // waitSubscribed resolves whether the Pub/Sub subscription is up, waiting
  // for it up to timeoutMs. Waiting works without it, more slowly.
  waitSubscribed(timeoutMs) {
    if (this._subscribed || !this._sub) return Promise.resolve(this._subscribed);
    return new Promise((resolve) => {
      const t = setTimeout(() => resolve(this._subscribed), timeoutMs);
      this._onSubscribed.push((ok) => {
        clearTimeout(t);
        resolve(ok);
      });
    });
  }

  // tryAcquire makes one attempt, never joining the key's line (line ttl 0).
  // Resolves {lease, pttl: 0} on success, or {lease: null, pttl} while
  // another token holds the key or others wait in its line (then the key is
  // handed to the line's head, and pttl is that holder's remaining
  // milliseconds; -1 if its key has no expiry). Redis errors (a key of the
  // wrong type, ...) reject and write nothing.
  async tryAcquire(key, ttlMs, token = newToken()) {
    check(key, ttlMs);
    const names = keyNames(key, this.prefix);
    const [acquired, fence, pttl] = await this.redis.klauthedAcquire(...names, token, ttlMs, 0, "");
    if (acquired === 1) {
      return { lease: new Lease(this, key, names[0], token, fence), pttl: 0 };
    }
    return { lease: null, pttl };
  }

  // acquire takes key for ttlMs milliseconds, waiting up to waitMs
  // (undefined: forever) while another holder has it. Resolves the Lease,
  // or null when the wait ended with the key still held. waitMs <= 0 is
  // tryAcquire.
  //
  // One token for the whole wait. Each attempt runs the acquire script with
  // it and lineTtlMs, which takes the key, or else keeps this token's place
  // in the key's line (joining at its tail the first time) alive for
  // lineTtlMs. When the holder releases, the release script sets the key to
  // the line head's token and publishes the hand-off on the head's channel.
  // Between attempts the waiter sleeps until, first: a hand-off for its
  // token arrives on this client's channel (or a release by this client
  // hands it the key, or the subscription comes back); lineTtlMs / 3 passed
  // (the keep-alive); or the holder's PTTL ran out (+1 ms, +1 ms per place
  // behind the head, at most 50). A holder without expiry (PTTL -1) leaves
  // the keep-alive. Without Pub/Sub that is polling. Whatever woke it, the
  // next attempt (same token) is what returns the lease: a hand-off shows as
  // the lock holding this token, [1, fence, ttl, 0], and the attempt
  // restarts the lease's TTL.
  //
  // When the wait ends (deadline, error) it runs the release script with the
  // token, which takes it out of the line or, if the key was handed to it
  // meanwhile, releases the key to the next in line.
  async acquire(key, ttlMs, { waitMs, lineTtlMs = DEFAULT_LINE_TTL_MS } = {}) {
    check(key, ttlMs);
    if (waitMs !== undefined && waitMs <= 0) return (await this.tryAcquire(key, ttlMs)).lease;
    checkLineTtl(lineTtlMs);
    const names = keyNames(key, this.prefix);
    const token = newToken();
    const deadline = waitMs === undefined ? Infinity : performance.now() + waitMs;
    const keep = lineTtlMs / 3;
    const w = { woken: false, wake: null };
    // Registered before the first attempt: a release may hand the key to
    // this token before the attempt's reply arrives.
    this._waiters.set(token, w);
    try {
      for (;;) {
        w.woken = false; // a wake-up during the attempt still counts
        const [acquired, fence, pttl, position] = await this.redis.klauthedAcquire(
          ...names,
          token,
          ttlMs,
          lineTtlMs,
          // The channel only while subscribed (it is strict); the
          // subscription coming or going wakes this waiter, so its next
          // attempt brings its place up to date.
          this._subscribed ? this.channel : "",
        );
        if (acquired === 1) return new Lease(this, key, names[0], token, fence);
        let d = keep;
        if (pttl > 0) d = Math.min(d, pttl + 1 + Math.min(Math.max(position - 1, 0), 50));
        const left = deadline - performance.now();
        if (left <= 0) {
          await this._releaseToken(key, token);
          return null;
        }
        d = Math.min(d, left);
        if (!w.woken) {
          await new Promise((resolve) => {
            const t = setTimeout(resolve, d);
            w.wake = () => {
              clearTimeout(t);
              resolve();
            };
          });
        }
        w.wake = null;
      }
    } catch (e) {
      // Leave the line, or free a key handed to us meanwhile; the original
      // error is what the caller needs to see.
      await this._releaseToken(key, token).catch(() => {});
      throw e;
    } finally {
      this._waiters.delete(token);
    }
  }

  // inspect reads the key without writing: {token, pttl} of its holder, or
  // {token: null, pttl: 0} when it is free.
  async inspect(key) {
    const [lockKey] = lockKeys(key, this.prefix);
    const [token, pttl] = await this.redis.klauthedInspect(lockKey);
    return token === null ? { token: null, pttl: 0 } : { token, pttl };
  }

  // _releaseToken runs the release script: it frees the key if token holds
  // it, else takes token out of the line, and hands a freed key to the
  // line's head. It does not publish to this client's own channel: the
  // reply names the head, and a waiter of this client is woken here.
  async _releaseToken(key, token) {
    const [released, next] = await this.redis.klauthedRelease(...keyNames(key, this.prefix), token, this.channel);
    if (next !== null) this._wake(next);
    return released === 1;
  }

  _wake(token) {
    const w = this._waiters.get(token);
    if (w) {
      w.woken = true;
      if (w.wake) w.wake();
    }
  }

  _wakeAll() {
    for (const token of this._waiters.keys()) this._wake(token);
  }
}

// worker serves the interop test's line protocol on stdin/stdout, one reply
// line per command line, holding at most one lease:
//
//   acquire KEY TTL_MS WAIT_MS [LINE_TTL_MS]
//                              -> "acquired FENCE TOKEN" | "timeout"
//   try KEY TTL_MS             -> "acquired FENCE TOKEN" | "held PTTL"
//   refresh TTL_MS             -> "refreshed 1" | "refreshed 0"
//   release                    -> "released 1" | "released 0"
//   rmw KEY SLEEP_MS           -> "value N"  (GET, sleep, SET N=old+1: not atomic)
//   keys KEY                   -> "keys LOCK FENCE LINE LINE_DEADLINES LINE_ARGS"
//   quit / end of input        -> exit
//
// With pubsub it says "ready" once subscribed (or after 5 s without);
// without it, its waiters poll. Any failure replies "error MESSAGE" and
// keeps serving.
async function worker(addr, prefix = DEFAULT_PREFIX, { pubsub = true } = {}) {
  const Redis = require("ioredis");
  const i = addr.lastIndexOf(":");
  const redis = new Redis({ host: addr.slice(0, i), port: Number(addr.slice(i + 1)), maxRetriesPerRequest: 1 });
  const locks = new LockClient(redis, { prefix, pubsub });
  if (pubsub && !(await locks.waitSubscribed(5000))) {
    console.error("klauthed worker: not subscribed after 5 s; polling");
  }
  let lease = null;
  const out = (line) => process.stdout.write(`${line}\n`);
  out("ready");
  const rl = readline.createInterface({ input: process.stdin, terminal: false });
  for await (const line of rl) {
    const f = line.trim().split(/\s+/);
    if (f[0] === "") continue;
    if (f[0] === "quit") break;
    let reply;
    try {
      switch (f[0]) {
        case "acquire": {
          const lineTtlMs = f.length > 4 ? Number(f[4]) : DEFAULT_LINE_TTL_MS;
          const got = await locks.acquire(f[1], Number(f[2]), { waitMs: Number(f[3]), lineTtlMs });
          if (got === null) {
            reply = "timeout";
          } else {
            lease = got;
            reply = `acquired ${lease.fence} ${lease.token}`;
          }
          break;
        }
        case "try": {
          const got = await locks.tryAcquire(f[1], Number(f[2]));
          if (got.lease === null) {
            reply = `held ${got.pttl}`;
          } else {
            lease = got.lease;
            reply = `acquired ${lease.fence} ${lease.token}`;
          }
          break;
        }
        case "refresh":
          reply = `refreshed ${(await lease.refresh(Number(f[1]))) ? 1 : 0}`;
          break;
        case "release":
          reply = `released ${(await lease.release()) ? 1 : 0}`;
          break;
        case "rmw": {
          const n = Number((await redis.get(f[1])) || 0) + 1;
          await sleep(Number(f[2]));
          await redis.set(f[1], String(n));
          reply = `value ${n}`;
          break;
        }
        case "keys":
          reply = `keys ${keyNames(f[1], prefix).join(" ")}`;
          break;
        default:
          reply = `error unknown command ${JSON.stringify(f[0])}`;
      }
    } catch (e) {
      reply = `error ${e.name}: ${String(e.message).replace(/\n/g, " ")}`;
    }
    out(reply);
  }
  rl.close();
  locks.close();
  redis.disconnect();
}

module.exports = {
  LockClient,
  Lease,
  newToken,
  lockKeys,
  keyNames,
  DEFAULT_PREFIX,
  DEFAULT_LINE_TTL_MS,
  SCRIPTS_DIR,
};

if (require.main === module) {
  const args = process.argv.slice(2);
  const poll = args.includes("--poll");
  const [mode, addr, prefix] = args.filter((a) => a !== "--poll");
  if (mode !== "worker" || !addr) {
    console.error("usage: node klauthed-lock.js worker HOST:PORT [PREFIX] [--poll]");
    process.exit(2);
  }
  worker(addr, prefix, { pubsub: !poll }).catch((e) => {
    console.error(e);
    process.exit(1);
  });
}
