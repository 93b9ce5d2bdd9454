// A saga participant in Node.js, written from the wire contract alone (docs/spec.md §3).
//
// `warehouse` reserves stock and releases it:
//   reserve {order_id, sku, qty}  -> {reservation_id}; a sku starting with "OOS-" fails
//                                    with out_of_stock (not retryable)
//   release {reservation_id}      -> {released: true|false}; compensation
//
// What makes it a correct participant:
//   - every final outcome is stored by its x-idempotency-key; a repeated command gets the
//     stored outcome again, without running the handler (in memory, and in the JSON file
//     named by WAREHOUSE_OUTCOMES_FILE when set, so that outcomes survive a restart);
//   - a compensation of an action it never performed is a success (nothing to undo), and
//     leaves a tombstone so that the action, should it arrive late, is not performed;
//   - replies go to <prefix>.replies with routing key = the command's reply_to,
//     correlation_id = the saga id, a fresh message_id, the command's x-saga-* headers,
//     x-idempotency-key and traceparent copied;
//   - a command that breaks the contract is sent to <prefix>.dead-letter with the header
//     x-saga-rejection saying why, and never redelivered in a loop;
//   - a command is acknowledged only once its reply is confirmed by the broker.
//
// Settings (environment): SAGA_AMQP_URL (amqp://guest:guest@127.0.0.1:5672/),
// SAGA_EXCHANGE_PREFIX (saga), WAREHOUSE_QUEUE (warehouse.commands),
// WAREHOUSE_OUTCOMES_FILE (unset: in memory only).
"use strict";

const amqp = require("amqplib");
const crypto = require("node:crypto");
const fs = require("node:fs");

const NAME = "warehouse";
const AMQP_URL = process.env.SAGA_AMQP_URL || "amqp://guest:guest@127.0.0.1:5672/";
const PREFIX = process.env.SAGA_EXCHANGE_PREFIX || "saga";
const QUEUE = process.env.WAREHOUSE_QUEUE || `${NAME}.commands`;
const OUTCOMES_FILE = process.env.WAREHOUSE_OUTCOMES_FILE || null;
const EXCHANGES = {
  commands: `${PREFIX}.commands`,
  replies: `${PREFIX}.replies`,
  deadLetter: `${PREFIX}.dead-letter`,
};
const COPIED_HEADERS = [
  "x-saga-id", "x-saga-name", "x-saga-version", "x-saga-step", "x-saga-kind",
  "x-saga-attempt", "x-idempotency-key", "traceparent",
];
const REQUIRED_HEADERS = ["x-saga-id", "x-saga-step", "x-saga-kind", "x-saga-attempt",
  "x-idempotency-key"];

// -- the business: reservations -------------------------------------------------------

class StepError extends Error {
  constructor(code, message, retryable = false) {
    super(message);
    this.code = code;
    this.retryable = retryable;
  }
}

const reservations = new Map(); // reservation_id -> {sku, qty}

const actions = {
  async reserve(input) {
    const { sku, qty } = input;
    if (typeof sku !== "string" || !Number.isInteger(qty) || qty < 1) {
      throw new StepError("invalid_input", "reserve needs {sku: string, qty: integer >= 1}");
    }
    if (sku.startsWith("OOS-")) {
      throw new StepError("out_of_stock", `${sku} is sold out`);
    }
    const reservationId = `wr-${crypto.randomUUID()}`;
    reservations.set(reservationId, { sku, qty });
    return { reservation_id: reservationId };
  },
};

const compensations = {
  // `actionOutput` is what this participant answered for the action (null if it never
  // ran): the input's reservation_id is null when the coordinator never saw the reply.
  async release(input, actionOutput) {
    const id = input.reservation_id || (actionOutput && actionOutput.reservation_id);
    return { reservation_id: id || null, released: Boolean(id) && reservations.delete(id) };
  },
};

// -- outcomes by idempotency key ------------------------------------------------------

const outcomes = new Map(); // idempotency key -> reply body
const inFlight = new Map(); // idempotency key -> Promise of the reply body

function loadOutcomes() {
  if (OUTCOMES_FILE && fs.existsSync(OUTCOMES_FILE)) {
    for (const [key, body] of Object.entries(JSON.parse(fs.readFileSync(OUTCOMES_FILE)))) {
      outcomes.set(key, body);
    }
  }
}

function storeOutcome(key, body) {
  outcomes.set(key, body);
  if (OUTCOMES_FILE) {
    const tmp = `${OUTCOMES_FILE}.tmp`;
    fs.writeFileSync(tmp, JSON.stringify(Object.fromEntries(outcomes)));
    fs.renameSync(tmp, OUTCOMES_FILE); // atomic: a crash leaves the old file or the new
  }
}

/** The action's idempotency key of a compensation's key `<saga>:<step>:compensation[:rN]`. */
function actionKeyOf(compensationKey) {
  const parts = compensationKey.split(":");
  const index = parts.lastIndexOf("compensation");
  if (index < 0) return null;
  parts[index] = "action";
  return parts.slice(0, index + 1).join(":");
}

async function perform(command, kind, input, key) {
  try {
    if (kind === "action") {
      const handler = actions[command];
      if (!handler) throw new StepError("unknown_command", `no action ${command}`);
      return { status: "succeeded", output: await handler(input) };
    }
    // A compensation: undo what the action did, if it did anything.
    const actionKey = actionKeyOf(key);
    if (inFlight.has(actionKey)) await inFlight.get(actionKey); // let it finish first
    const done = outcomes.get(actionKey);
    if (!done) {
      // Never performed: nothing to undo. A tombstone answers the action, should it still
      // arrive, without performing it.
      storeOutcome(actionKey, {
        status: "failed",
        error: { code: "compensated_before_action", message: "compensated already",
          retryable: false },
      });
    }
    if (!done || done.status !== "succeeded") {
      return { status: "succeeded", output: { undone: false, reason: "nothing to undo" } };
    }
    const handler = compensations[command];
    if (!handler) throw new StepError("unknown_command", `no compensation ${command}`);
    return { status: "succeeded", output: await handler(input, done.output) };
  } catch (error) {
    if (error instanceof StepError) {
      return {
        status: "failed",
        error: { code: error.code, message: error.message, retryable: error.retryable },
      };
    }
    // An unexpected error: worth another attempt, not stored as the final outcome.
    return {
      status: "failed",
      error: { code: "unexpected", message: String(error), retryable: true },
      transient: true,
    };
  }
}

/** The reply body for this key: the stored outcome, the one in flight, or a new one. */
async function outcomeFor(command, kind, input, key) {
  if (outcomes.has(key)) return outcomes.get(key);
  if (inFlight.has(key)) return inFlight.get(key);
  const pending = perform(command, kind, input, key).then((body) => {
    if (!body.transient) storeOutcome(key, body);
    const { transient, ...reply } = body;
    return reply;
  });
  inFlight.set(key, pending);
  try {
    return await pending;
  } finally {
    inFlight.delete(key);
  }
}

// -- the wire -------------------------------------------------------------------------

function header(message, name) {
  const value = (message.properties.headers || {})[name];
  return Buffer.isBuffer(value) ? value.toString() : value;
}

/** Why the command breaks the contract, or null. */
function contractProblem(message) {
  for (const name of REQUIRED_HEADERS) {
    if (header(message, name) === undefined) return `missing header ${name}`;
  }
  const kind = header(message, "x-saga-kind");
  if (kind !== "action" && kind !== "compensation") return `x-saga-kind ${kind} is unknown`;
  if (!message.properties.replyTo) return "no reply_to";
  let body;
  try {
    body = JSON.parse(message.content.toString("utf8"));
  } catch (error) {
    return `the body is not JSON: ${error.message}`;
  }
  if (body === null || typeof body !== "object" || Array.isArray(body)) {
    return "the body is not a JSON object";
  }
  return null;
}

async function main() {
  loadOutcomes();
  const connection = await amqp.connect(AMQP_URL);
  const channel = await connection.createConfirmChannel();
  await channel.assertExchange(EXCHANGES.commands, "topic", { durable: true });
  await channel.assertExchange(EXCHANGES.replies, "direct", { durable: true });
  await channel.assertExchange(EXCHANGES.deadLetter, "fanout", { durable: true });
  await channel.assertQueue(QUEUE, {
    durable: true,
    arguments: { "x-queue-type": "quorum", "x-dead-letter-exchange": EXCHANGES.deadLetter },
  });
  await channel.bindQueue(QUEUE, EXCHANGES.commands, `${NAME}.*`);
  await channel.prefetch(16);

  const publish = (exchange, routingKey, content, options) =>
    new Promise((resolve, reject) => {
      channel.publish(exchange, routingKey, content, options, (error) =>
        error ? reject(error) : resolve());
    });

  async function handle(message) {
    const problem = contractProblem(message);
    if (problem !== null) {
      console.warn(`[${NAME}] dead-lettered: ${problem}`);
      await publish(EXCHANGES.deadLetter, message.fields.routingKey, message.content, {
        ...message.properties,
        headers: { ...(message.properties.headers || {}), "x-saga-rejection": problem },
      });
      channel.ack(message);
      return;
    }
    const kind = header(message, "x-saga-kind");
    const key = header(message, "x-idempotency-key");
    const command = message.properties.type || message.fields.routingKey.split(".").pop();
    const input = JSON.parse(message.content.toString("utf8"));
    const reply = await outcomeFor(command, kind, input, key);
    const detail = reply.status === "succeeded" ? reply.output : reply.error;
    console.log(`[${NAME}] ${key} ${command} -> ${reply.status} ${JSON.stringify(detail)}`);
    const headers = {};
    for (const name of COPIED_HEADERS) {
      const value = header(message, name);
      if (value !== undefined) headers[name] = value;
    }
    await publish(EXCHANGES.replies, message.properties.replyTo, Buffer.from(JSON.stringify(reply)), {
      correlationId: header(message, "x-saga-id"),
      messageId: crypto.randomUUID(),
      contentType: "application/json",
      persistent: true,
      timestamp: Math.floor(Date.now() / 1000),
      headers,
    });
    channel.ack(message);
  }

  await channel.consume(QUEUE, (message) => {
    if (message === null) return; // the queue was deleted
    handle(message).catch((error) => {
      console.error(`[${NAME}] ${error.stack || error}`);
      channel.nack(message, false, true); // the broker could not take the reply: try again
    });
  });
  console.log(`[${NAME}] consuming ${QUEUE} (bound to ${EXCHANGES.commands} with ${NAME}.*)`);

  let stopping = false;
  const stop = async () => {
    stopping = true;
    console.log(`[${NAME}] stopping`);
    try {
      await channel.close();
      await connection.close();
    } finally {
      process.exit(0);
    }
  };
  process.on("SIGINT", stop);
  process.on("SIGTERM", stop);
  connection.on("close", () => {
    if (!stopping) process.exit(1); // a lost connection: let a supervisor restart it
  });
}

main().catch((error) => {
  console.error(`[${NAME}] cannot start: ${error.message}`);
  process.exit(1);
});
