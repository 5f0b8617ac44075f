"use strict";
// klauthed lock from Node.js: the scripts in ../../scripts through ioredis.
//
// Leases taken here interoperate with Go services using lockredis (and with
// the Python helper) on the same Redis: same scripts, same key names, same
// token format. Install with `npm ci` in this directory.
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
//
// `node klauthed-lock.js worker HOST:PORT` serves the line protocol that the
// interop test (examples/interop_test.go) drives.

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

// Polling bounds while waiting for a held key (lockredis: MinBackoff,
// MaxBackoff). A wait never sleeps past the holder's remaining TTL.
const MIN_BACKOFF_MS = 1;
const MAX_BACKOFF_MS = 50;

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

function check(key, ttlMs) {
  if (typeof key !== "string" || key === "" || Buffer.byteLength(key) > MAX_KEY_LEN) {
    throw new RangeError(`klauthed: invalid key ${JSON.stringify(key)}: want 1 to ${MAX_KEY_LEN} bytes`);
  }
  if (!Number.isInteger(ttlMs) || ttlMs < MIN_TTL_MS || ttlMs > MAX_TTL_MS) {
    throw new RangeError(`klauthed: invalid ttlMs ${ttlMs}: want an integer from ${MIN_TTL_MS} to ${MAX_TTL_MS}`);
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Lease is one acquisition of a key. `fence` grows with every acquisition of
// the key, in any language (a JS number: exact up to 2^53).
class Lease {
  constructor(redis, key, lockKey, token, fence) {
    this._redis = redis;
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
    return (await this._redis.klauthedRefresh(this.lockKey, this.token, ttlMs)) === 1;
  }

  // release frees the key if this lease still holds it. Resolves true if it
  // did; false if the lease had already ended, in which case nothing changed:
  // a stale lease never frees the next holder's lock. Safe to call twice.
  async release() {
    return (await this._redis.klauthedRelease(this.lockKey, this.token)) === 1;
  }
}

// LockClient hands out leases on string keys, stored by the klauthed scripts
// in the Redis behind `redis` (an ioredis Redis or Cluster). The scripts run
// with EVALSHA and fall back to EVAL on NOSCRIPT (defineCommand).
class LockClient {
  constructor(redis, { prefix = DEFAULT_PREFIX } = {}) {
    this.redis = redis;
    this.prefix = prefix;
    redis.defineCommand("klauthedAcquire", { numberOfKeys: 2, lua: script("acquire") });
    redis.defineCommand("klauthedRefresh", { numberOfKeys: 1, lua: script("refresh") });
    redis.defineCommand("klauthedRelease", { numberOfKeys: 1, lua: script("release") });
    redis.defineCommand("klauthedInspect", { numberOfKeys: 1, lua: script("inspect"), readOnly: true });
  }

  // tryAcquire makes one attempt. Resolves {lease, pttl: 0} on success, or
  // {lease: null, pttl} while another token holds the key, with pttl the
  // holder's remaining milliseconds (-1 if its key has no expiry). Redis
  // errors (a key of the wrong type, ...) reject and write nothing.
  async tryAcquire(key, ttlMs, token = newToken()) {
    check(key, ttlMs);
    const [lockKey, fenceKey] = lockKeys(key, this.prefix);
    const [acquired, fence, ttl] = await this.redis.klauthedAcquire(lockKey, fenceKey, token, ttlMs);
    if (acquired === 1) {
      return { lease: new Lease(this.redis, key, lockKey, token, fence), pttl: 0 };
    }
    return { lease: null, pttl: ttl };
  }

  // acquire takes key for ttlMs milliseconds, waiting up to waitMs
  // (undefined: forever) while another holder has it. Waiting polls with
  // backoff from 1 ms to 50 ms, never sleeping past the holder's remaining
  // TTL or the deadline. Resolves the Lease, or null when the wait ended
  // with the key still held.
  async acquire(key, ttlMs, { waitMs } = {}) {
    const deadline = waitMs === undefined ? Infinity : Date.now() + waitMs;
    const token = newToken(); // one token for all attempts: a retry after a lost reply is idempotent
    let backoff = MIN_BACKOFF_MS;
    for (;;) {
      const { lease, pttl } = await this.tryAcquire(key, ttlMs, token);
      if (lease !== null) return lease;
      let wait = backoff / 2 + Math.random() * (backoff / 2);
      if (pttl > 0) wait = Math.min(wait, pttl);
      const left = deadline - Date.now();
      if (left <= 0) return null;
      await sleep(Math.min(wait, left));
      backoff = Math.min(backoff * 2, MAX_BACKOFF_MS);
    }
  }

  // inspect reads the key without writing: {token, pttl} of its holder, or
  // {token: null, pttl: 0} when it is free.
  async inspect(key) {
    const [lockKey] = lockKeys(key, this.prefix);
    const [token, pttl] = await this.redis.klauthedInspect(lockKey);
    return token === null ? { token: null, pttl: 0 } : { token, pttl };
  }
}

// worker serves the interop test's line protocol on stdin/stdout, one reply
// line per command line, holding at most one lease:
//
//   acquire KEY TTL_MS WAIT_MS -> "acquired FENCE TOKEN" | "timeout"
//   refresh TTL_MS             -> "refreshed 1" | "refreshed 0"
//   release                    -> "released 1" | "released 0"
//   rmw KEY SLEEP_MS           -> "value N"  (GET, sleep, SET N=old+1: not atomic)
//   keys KEY                   -> "keys LOCK_KEY FENCE_KEY"
//   quit / end of input        -> exit
//
// Any failure replies "error MESSAGE" and keeps serving.
async function worker(addr, prefix = DEFAULT_PREFIX) {
  const Redis = require("ioredis");
  const i = addr.lastIndexOf(":");
  const redis = new Redis({ host: addr.slice(0, i), port: Number(addr.slice(i + 1)), maxRetriesPerRequest: 1 });
  const locks = new LockClient(redis, { prefix });
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
          const got = await locks.acquire(f[1], Number(f[2]), { waitMs: Number(f[3]) });
          if (got === null) {
            reply = "timeout";
          } else {
            lease = got;
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
          reply = `keys ${lockKeys(f[1], prefix).join(" ")}`;
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
  redis.disconnect();
}

module.exports = { LockClient, Lease, newToken, lockKeys, DEFAULT_PREFIX, SCRIPTS_DIR };

if (require.main === module) {
  const [mode, addr, prefix] = process.argv.slice(2);
  if (mode !== "worker" || !addr) {
    console.error("usage: node klauthed-lock.js worker HOST:PORT [PREFIX]");
    process.exit(2);
  }
  worker(addr, prefix).catch((e) => {
    console.error(e);
    process.exit(1);
  });
}
