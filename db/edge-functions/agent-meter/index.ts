/**
 * Supabase Edge Function `agent-meter`: a Supabase-hosted agent that pays for each call with
 * tokenbill tokens, through the same PostgreSQL functions as POST /api/agent in the web app.
 *
 * POST with `Authorization: Bearer <tokenbill API key>`, optional `Idempotency-Key`, and a JSON
 * body `{"message": "...", "conversation_id": "<uuid>"?}`. Order, as webapp/agent.py: authenticate
 * the key → reserve the call's price and record it (api.begin_agent_request; the price is the
 * database's, looked up by the agent's price key) → run the agent → settle however it ended
 * (api.settle_agent_request): a computed reply is charged ('done', even when the client has
 * gone: the reply is stored and a replay of the key returns it); a failure or timeout before
 * any reply releases the reservation. The Idempotency-Key is bound to a hash of the body: the
 * same key with another body is 422 and charges nothing; with the same body it answers the
 * first outcome and pays nothing. 402 when the balance is below the price.
 *
 * Settings: AGENT_TIMEOUT_SECONDS (60), AGENT_HOLD_SECONDS (0 = 2 × timeout + 30, never less
 * than timeout + 5), LLM_* (./agent.ts), and the database settings of ../_shared/db.ts (acts as
 * tokenbill_app). Deploy with JWT verification off: callers authenticate with their tokenbill
 * API key, not a Supabase session.
 */
import * as db from "../_shared/db.ts";
import { envNumber, json, log, readCapped } from "../_shared/http.ts";
import { agentName, AgentTimeout, answer, priceKey } from "./agent.ts";

const MAX_MESSAGE_CHARS = 20000; // api.begin_agent_request's hard bound
const MAX_BODY_BYTES = 256 * 1024;
const SWEEP_EVERY_MS = 60_000;
const IDEMPOTENCY_KEY = /^[\x21-\x7e]{1,200}$/;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

const FAILED = "The agent failed to answer; your tokens were returned.";
const TIMED_OUT = "The agent took too long to answer; your tokens were returned.";
const PARTIAL = "The agent stopped before finishing; you were charged for the part delivered.";
const IN_PROGRESS = "This request is still being answered; retry in a moment.";
const KEY_REUSED = "This Idempotency-Key was already used with a different request body.";
const UNSAVED = "The reply could not be saved; retry with the same Idempotency-Key later.";

interface Call {
  message: string;
  conversationId: string | null;
  requestId: string;
}

/** A parsed call, or the 4xx answer explaining what is wrong with it. */
async function parse(request: Request): Promise<Call | Response> {
  const raw = await readCapped(request, MAX_BODY_BYTES);
  if (raw === null) return json(413, { error: "request too large" });
  let data: unknown;
  try {
    data = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(raw));
  } catch {
    return json(400, { error: "Send a JSON object with a message." });
  }
  if (typeof data !== "object" || data === null || Array.isArray(data)) {
    return json(400, { error: "Send a JSON object with a message." });
  }
  const { message, conversation_id: conversationId } = data as Record<string, unknown>;
  if (typeof message !== "string" || !message.trim()) {
    return json(400, { error: "message must be a non-empty string." });
  }
  if (Array.from(message).length > MAX_MESSAGE_CHARS) { // characters, as PostgreSQL counts
    return json(413, { error: `message must be at most ${MAX_MESSAGE_CHARS} characters.` });
  }
  if (
    conversationId != null && (typeof conversationId !== "string" || !UUID.test(conversationId))
  ) {
    return json(400, { error: "conversation_id must be a UUID." });
  }
  const requestId = request.headers.get("idempotency-key") || crypto.randomUUID();
  if (!IDEMPOTENCY_KEY.test(requestId)) {
    return json(400, { error: "Idempotency-Key must be 1 to 200 printable ASCII characters." });
  }
  const conversation = conversationId == null ? null : (conversationId as string).toLowerCase();
  return { message, conversationId: conversation, requestId };
}

async function sha256Hex(text: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * What an Idempotency-Key is bound to: the same SHA-256 as webapp/agent.py's request_hash
 * (Python's json.dumps with sorted keys, compact separators and ASCII escapes), so a key is
 * bound to the same content whichever entry point saw it first.
 */
export async function requestHash(message: string, conversationId: string | null): Promise<string> {
  const canonical = JSON.stringify({ conversation_id: conversationId, message })
    .replace(/[\u0080-\uffff]/g, (c) => "\\u" + c.charCodeAt(0).toString(16).padStart(4, "0"));
  return await sha256Hex(canonical);
}

/** The user of the bearer API key, or null; keys are stored as their SHA-256 hex. */
async function authenticate(request: Request): Promise<string | null> {
  const [scheme, token] = (request.headers.get("authorization") ?? "").split(" ", 2);
  if (scheme?.toLowerCase() !== "bearer" || !token?.trim()) return null;
  return await db.userForApiKey(await sha256Hex(token.trim()));
}

/** How long a reservation lives before the expiry rule settles it (webapp/agent.py's rule). */
function holdSeconds(timeout: number): number {
  const configured = Math.floor(envNumber("AGENT_HOLD_SECONDS", 0));
  const floor = Math.ceil(timeout) + 5;
  return configured > 0 ? Math.max(configured, floor) : Math.floor(2 * timeout + 30);
}

let lastSweep = 0;

/** At most once a minute per isolate: settle everyone's overdue holds (dead instances'). */
async function sweep(): Promise<void> {
  const now = Date.now();
  if (now - lastSweep < SWEEP_EVERY_MS) return;
  lastSweep = now;
  try {
    const n = await db.expireAgentHolds();
    if (n) log("warn", "settled expired agent holds left by a dead instance", { n });
  } catch (error) { // housekeeping must never fail a user's request
    log("warn", "could not expire agent holds", { sqlstate: db.sqlstate(error) });
  }
}

/** The first call's outcome for a repeated Idempotency-Key (mirrors webapp/agent.py). */
function replay(begun: db.Begun, requestId: string): Response {
  const body = {
    request_id: requestId,
    conversation_id: begun.conversation_id,
    balance: begun.balance,
    price: begun.price,
    cost: begun.charged,
    replayed: true,
  };
  if (begun.status === "pending") return json(409, { ...body, error: IN_PROGRESS });
  if (begun.status === "timeout") return json(504, { ...body, error: TIMED_OUT });
  if (begun.status === "failed") return json(502, { ...body, error: FAILED });
  const partial = begun.status === "partial" ? { partial: true, warning: PARTIAL } : {};
  return json(200, { ...body, reply: begun.reply, ...partial });
}

/** HTTP status and body fields for how a call was settled (webapp/agent.py's _ended). */
function ended(settled: db.Settled): [number, Record<string, unknown>] {
  const fields = { balance: settled.balance, cost: settled.charged };
  switch (settled.message_status) {
    case "done":
      return [200, fields];
    case "partial":
      return [200, { ...fields, partial: true, warning: PARTIAL }];
    case "timeout":
      return [504, { ...fields, error: TIMED_OUT }];
    default:
      return [502, { ...fields, error: FAILED }];
  }
}

async function meter(request: Request): Promise<Response> {
  if (request.method !== "POST") return json(405, { error: "POST only" });
  const userId = await authenticate(request);
  if (!userId) return json(401, { error: "Send Authorization: Bearer <tokenbill API key>" });
  const call = await parse(request);
  if (call instanceof Response) return call;
  await sweep();

  const timeout = envNumber("AGENT_TIMEOUT_SECONDS", 60);
  const begun = await db.beginAgentRequest(
    userId,
    call.requestId,
    call.conversationId,
    call.message,
    priceKey(),
    await requestHash(call.message, call.conversationId),
    holdSeconds(timeout),
  );
  if (begun.outcome === "insufficient_tokens") {
    return json(402, {
      error: "You need more tokens to use the agent",
      balance: begun.balance,
      price: begun.price,
    });
  }
  if (begun.outcome === "mismatch") {
    return json(422, { error: KEY_REUSED, balance: begun.balance });
  }
  if (begun.outcome === "replayed") return replay(begun, call.requestId);

  const body = {
    request_id: call.requestId,
    conversation_id: begun.conversation_id,
    price: begun.price,
  };
  let reply = "";
  let outcome: "done" | "failed" | "timeout" = "done";
  let error: string | null = null;
  try {
    reply = await answer(call.message, timeout);
  } catch (failure) {
    outcome = failure instanceof AgentTimeout ? "timeout" : "failed";
    error = failure instanceof Error ? `${failure.name}: ${failure.message}` : String(failure);
    log("warn", "agent request failed", { requestId: call.requestId, outcome });
  }
  // Settled whether or not the client is still there: a computed reply is charged and kept.
  let settled: db.Settled;
  try {
    settled = await db.settleAgentRequest(
      userId,
      call.requestId,
      outcome,
      reply,
      Array.from(call.message).length,
      error,
    );
  } catch (failure) {
    log("error", "could not settle; the hold expires by its rule", {
      requestId: call.requestId,
      sqlstate: db.sqlstate(failure),
    });
    return json(503, { ...body, error: UNSAVED });
  }
  const [status, fields] = ended(settled);
  const answered = status === 200 ? { reply, ...fields, agent: agentName() } : fields;
  return json(status, { ...body, ...answered });
}

export async function handle(request: Request): Promise<Response> {
  try {
    return await meter(request);
  } catch (error) {
    const status = db.httpStatusFor(error);
    log(status >= 500 ? "error" : "warn", "agent-meter refused", {
      sqlstate: db.sqlstate(error),
      error: String(error),
    });
    const message = status >= 500
      ? "The service is temporarily unavailable; try again."
      : (error as Error).message;
    return json(status, { error: message });
  }
}

Deno.serve(handle);
