/**
 * The only module of the Edge Functions that talks to PostgreSQL.
 *
 * Why one place: every statement below calls one `api.*` function, exactly like the Flask app
 * does, inside one transaction that first switches to the caller's group role (`set_config(
 * 'role', …, true)`, the transaction-local form of SET ROLE, which also works behind Supabase's
 * transaction pooler). When a function is renamed or a role is split, only this file changes.
 *
 * Each caller has its own login and group role, as in the web app (docs/security.md): the
 * webhook applies Stripe events as `tokenbill_webhook` (like WEBHOOK_DATABASE_URL), the agent
 * meters calls as `tokenbill_app` (like DATABASE_URL). Neither role can do the other's work.
 *
 * Settings (environment / `supabase secrets set`):
 * - TOKENBILL_WEBHOOK_DATABASE_URL / TOKENBILL_AGENT_DATABASE_URL: each caller's postgres://
 *   URL; else TOKENBILL_DATABASE_URL; else Supabase's own SUPABASE_DB_URL.
 * - TOKENBILL_WEBHOOK_ROLE / TOKENBILL_AGENT_ROLE: the role each caller acts as (defaults
 *   tokenbill_webhook / tokenbill_app).
 * - TOKENBILL_DB_TIMEOUT_SECONDS: longest wait for a connection (default 10).
 */
import postgres from "npm:postgres@3.4.9";

export type Sql = ReturnType<typeof postgres>;

/** Each caller's settings and defaults, side by side. */
export const CALLERS = {
  webhook: {
    role: "TOKENBILL_WEBHOOK_ROLE",
    defaultRole: "tokenbill_webhook",
    url: "TOKENBILL_WEBHOOK_DATABASE_URL",
  },
  agent: {
    role: "TOKENBILL_AGENT_ROLE",
    defaultRole: "tokenbill_app",
    url: "TOKENBILL_AGENT_DATABASE_URL",
  },
} as const;
export type Caller = keyof typeof CALLERS;

/** SQLSTATEs caused by the request itself (bad argument): retrying cannot help. */
const CLIENT_SQLSTATES = new Set(["TB003"]);

export function roleFor(caller: Caller): string {
  return Deno.env.get(CALLERS[caller].role) || CALLERS[caller].defaultRole;
}

const pools = new Map<string, Sql>();

/** One small pool per URL and isolate, opened lazily so a missing URL is a 5xx, not a crash. */
function pool(caller: Caller): Sql {
  const url = Deno.env.get(CALLERS[caller].url) || Deno.env.get("TOKENBILL_DATABASE_URL") ||
    Deno.env.get("SUPABASE_DB_URL");
  if (!url) throw new Error(`${CALLERS[caller].url} (or SUPABASE_DB_URL) is not set`);
  let client = pools.get(url);
  if (!client) {
    client = postgres(url, {
      max: 3,
      connect_timeout: Number(Deno.env.get("TOKENBILL_DB_TIMEOUT_SECONDS")) || 10,
      idle_timeout: 60,
      prepare: false, // Supabase's transaction pooler cannot keep prepared statements
      fetch_types: false,
      onnotice: () => {},
    });
    pools.set(url, client);
  }
  return client;
}

/** A role that cannot be taken (missing, or the login is not a member): the operator's fault. */
export class RoleError extends Error {
  override name = "RoleError";
}

/** Run ``work`` in one transaction acting as the caller's role; resolves after COMMIT. */
async function asRole<T>(caller: Caller, work: (tx: Sql) => Promise<T>): Promise<T> {
  return await pool(caller).begin(async (tx) => {
    const role = roleFor(caller);
    try {
      await tx`select set_config('role', ${role}, true)`;
    } catch (error) {
      // Not a PostgresError any more: a misconfigured role must never look like a bad request.
      if (!(error instanceof postgres.PostgresError)) throw error;
      throw new RoleError(`cannot act as role ${role}: ${error.message}`);
    }
    return await work(tx as unknown as Sql);
  }) as T;
}

/** True when the database refused the arguments (TB003, or a data exception such as bad JSON). */
export function isClientError(error: unknown): boolean {
  const code = sqlstate(error);
  return typeof code === "string" && (CLIENT_SQLSTATES.has(code) || code.startsWith("22"));
}

/** HTTP status for a database error, like webapp/errors.py: ours are 4xx, the rest 503. */
export function httpStatusFor(error: unknown): number {
  const code = sqlstate(error) ?? "";
  if (code in SQLSTATE_STATUS) return SQLSTATE_STATUS[code];
  return code.startsWith("22") ? 400 : 503;
}

const SQLSTATE_STATUS: Record<string, number> = {
  TB001: 409, // immutable
  TB002: 404, // not found
  TB003: 400, // invalid argument
  TB004: 409, // conflict
  TB005: 409, // would go negative
  TB006: 403, // forbidden
};

/** The SQLSTATE of a database error, for status mapping; undefined for connection trouble. */
export function sqlstate(error: unknown): string | undefined {
  return error instanceof postgres.PostgresError ? error.code : undefined;
}

// ------------------------------------------------------------------------------------------
// Stripe events (tokenbill_webhook)
// ------------------------------------------------------------------------------------------
export interface EventOutcome {
  event_id: string;
  outcome: string;
  detail: string;
}

/**
 * api.handle_stripe_event on the verified raw body: the whole effect, once, committed.
 * ``livemode``: the mode of the Stripe key this deployment holds (null: unknown); an event of
 * the other mode is recorded as rejected and never applied.
 */
export async function handleStripeEvent(
  body: string,
  livemode: boolean | null,
): Promise<EventOutcome> {
  const rows = await asRole("webhook", (tx) =>
    tx<EventOutcome[]>`
      select event_id, outcome, detail
        from api.handle_stripe_event(${body}::text::jsonb, ${livemode}::boolean)`);
  return rows[0];
}

/** Leave a trace of a failed delivery in api.stripe_events (best effort, own transaction). */
export async function recordStripeEventFailure(body: string, error: string): Promise<void> {
  await asRole(
    "webhook",
    (tx) => tx`select api.record_stripe_event_failure(${body}::text::jsonb, ${error})`,
  );
}

// ------------------------------------------------------------------------------------------
// Agent metering (tokenbill_app): reserve → settle, as webapp/agent.py and webapp/metering.py
// ------------------------------------------------------------------------------------------
export interface Begun {
  outcome: "started" | "insufficient_tokens" | "replayed" | "mismatch";
  conversation_id: string | null;
  balance: number;
  status: string | null;
  reply: string | null;
  error: string | null;
  price: number;
  charged: number | null;
}

export interface Settled {
  status: "settled" | "already_settled";
  message_status: "done" | "partial" | "failed" | "timeout";
  charged: number;
  balance: number;
}

/** The user of an API key (its SHA-256 hex), or null; also stamps the key's last use. */
export async function userForApiKey(keyHash: string): Promise<string | null> {
  const rows = await asRole(
    "agent",
    (tx) => tx<{ user_id: string | null }[]>`select api.user_for_api_key(${keyHash}) as user_id`,
  );
  return rows[0]?.user_id ?? null;
}

/** Reserve the price of ``agent``'s call (the database's) and record it, or say why not. */
export async function beginAgentRequest(
  userId: string,
  requestId: string,
  conversationId: string | null,
  message: string,
  agent: string,
  requestHash: string,
  holdSeconds: number,
): Promise<Begun> {
  const rows = await asRole("agent", (tx) =>
    tx<Begun[]>`
      select outcome, conversation_id, balance, status, reply, error, price, charged
        from api.begin_agent_request(${userId}::uuid, ${requestId}, ${conversationId}::uuid,
                                     ${message}, ${agent}, ${requestHash},
                                     ${holdSeconds}::integer)`);
  return rows[0];
}

/**
 * Settle a started request however it ended: 'done' with the computed reply (charged), or
 * 'failed' / 'timeout' with nothing delivered (released). The database decides the charge.
 */
export async function settleAgentRequest(
  userId: string,
  requestId: string,
  outcome: "done" | "failed" | "timeout",
  reply: string,
  inputChars: number,
  error: string | null,
): Promise<Settled> {
  const parts = reply ? 1 : 0;
  const rows = await asRole("agent", (tx) =>
    tx<Settled[]>`
      select status, message_status, charged, balance
        from api.settle_agent_request(${userId}::uuid, ${requestId}, ${outcome}, ${reply},
                                      ${inputChars}::integer, ${(error ?? "").slice(0, 1000)},
                                      ${parts}::integer)`);
  return rows[0];
}

/** Settle every overdue hold (dead instances' calls); returns how many. */
export async function expireAgentHolds(): Promise<number> {
  const rows = await asRole(
    "agent",
    (tx) => tx<{ n: number }[]>`select api.expire_agent_holds() as n`,
  );
  return rows[0]?.n ?? 0;
}
