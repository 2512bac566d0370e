/**
 * Supabase Edge Function `agent-meter`: a Supabase-hosted agent that pays for each call with
 * tokenbill tokens, through the same PostgreSQL functions as POST /api/agent in the web app.
 *
 * POST with `Authorization: Bearer <tokenbill API key>`, optional `Idempotency-Key`, and a JSON
 * body `{"message": "...", "conversation_id": "<uuid>"?}`. Order: authenticate the key → charge
 * and record the request (begin) → run the agent → store the reply (finish), or give the tokens
 * back (fail). A repeated Idempotency-Key answers the first call's outcome and pays nothing.
 * 402 when the balance is too low; 502/504 when the agent failed or timed out (refunded).
 *
 * Settings: AGENT_TOKEN_COST (1), AGENT_TIMEOUT_SECONDS (60), LLM_* (./agent.ts), and the
 * database settings of ../_shared/db.ts. Deploy with JWT verification off: callers
 * authenticate with their tokenbill API key, not a Supabase session.
 */
import * as db from "../_shared/db.ts";
import { envNumber, json, log, readCapped } from "../_shared/http.ts";
import { AgentTimeout, answer } from "./agent.ts";

const MAX_MESSAGE_CHARS = 20000; // api.begin_agent_request enforces the same bound
const MAX_BODY_BYTES = 256 * 1024;
const IDEMPOTENCY_KEY = /^[\x21-\x7e]{1,200}$/;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

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
  if (message.length > MAX_MESSAGE_CHARS) {
    return json(400, { error: `message must be at most ${MAX_MESSAGE_CHARS} characters.` });
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
  return { message, conversationId: (conversationId as string | null) ?? null, requestId };
}

/** The user of the bearer API key, or null; keys are stored as their SHA-256 hex. */
async function authenticate(request: Request): Promise<string | null> {
  const [scheme, token] = (request.headers.get("authorization") ?? "").split(" ", 2);
  if (scheme?.toLowerCase() !== "bearer" || !token?.trim()) return null;
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(token.trim()));
  const hex = Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
  return await db.userForApiKey(hex);
}

/** The first call's outcome for a repeated Idempotency-Key (mirrors webapp/agent.py). */
function replay(begun: db.Begun, requestId: string): Response {
  const body = {
    request_id: requestId,
    conversation_id: begun.conversation_id,
    balance: begun.balance,
    replayed: true,
  };
  if (begun.status === "pending") return json(409, { ...body, error: "still being answered" });
  if (begun.status === "timeout") return json(504, { ...body, error: "the agent timed out" });
  if (begun.status === "failed") return json(502, { ...body, error: "the agent failed" });
  return json(200, { ...body, reply: begun.reply });
}

async function meter(request: Request): Promise<Response> {
  if (request.method !== "POST") return json(405, { error: "POST only" });
  const userId = await authenticate(request);
  if (!userId) return json(401, { error: "Send Authorization: Bearer <tokenbill API key>" });
  const call = await parse(request);
  if (call instanceof Response) return call;

  const cost = envNumber("AGENT_TOKEN_COST", 1);
  const begun = await db.beginAgentRequest(
    userId,
    call.requestId,
    call.conversationId,
    call.message,
    cost,
  );
  if (begun.outcome === "insufficient_tokens") {
    return json(402, { error: "You need more tokens to use the agent", balance: begun.balance });
  }
  if (begun.outcome === "replayed") return replay(begun, call.requestId);

  const body = { request_id: call.requestId, conversation_id: begun.conversation_id };
  let reply: string;
  try {
    reply = await answer(call.message, envNumber("AGENT_TIMEOUT_SECONDS", 60));
  } catch (error) {
    const timedOut = error instanceof AgentTimeout;
    const detail = error instanceof Error ? `${error.name}: ${error.message}` : String(error);
    log("warn", "agent request failed; tokens given back", { requestId: call.requestId, detail });
    const balance = await db.failAgentRequest(userId, call.requestId, detail, timedOut);
    const error_ = timedOut ? "The agent took too long to answer" : "The agent failed to answer";
    return json(timedOut ? 504 : 502, {
      ...body,
      error: `${error_}; your tokens were returned.`,
      balance,
    });
  }
  const balance = await db.finishAgentRequest(userId, call.requestId, reply);
  return json(200, { ...body, reply, balance });
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
